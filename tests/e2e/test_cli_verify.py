"""`recordio_tools verify`: every planted corruption found and listed in one run, file and key named."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from cli_helpers import jpeg_bytes, make_dataset, run_cli
from recordio_tools.recordio import (RecordReader, RecordWriter, format_index, frame_record, image_header, pack,
                                     read_index)


def _set_index_offset(idx, key: int, offset: int) -> None:
    entries = [(k, offset if k == key else o) for k, o in read_index(idx)]
    pathlib.Path(idx).write_text(format_index(entries))


def _rewrite_shard(rec, replace: dict[int, bytes]) -> None:
    """Rewrite a shard with the payloads of some keys replaced."""
    with RecordReader(rec) as reader:
        items = list(reader.items())
    with RecordWriter(rec) as writer:
        for key, payload in items:
            writer.write(key, replace.get(key, payload))


@pytest.fixture
def corrupted(tmp_path):
    """A dataset of 7 shards x 3 records (classes [10, 13)); shards 1-6 each carry one planted problem."""
    folder = tmp_path / "ds"
    make_dataset(folder, "ds", [7, 7, 7], class_offset=10, num_shards=7)
    shard = [folder / f"shard-{i:05d}" for i in range(7)]
    os.remove(f"{shard[1]}.idx")                                                   # missing .idx
    rec = f"{shard[2]}.rec"
    with open(rec, "r+b") as f:                                                    # truncated .rec
        f.truncate(os.path.getsize(rec) - 100)
    offset = dict(read_index(f"{shard[3]}.idx"))[1]                                # wrong magic at key 1
    with open(f"{shard[3]}.rec", "r+b") as f:
        f.seek(offset)
        f.write(b"\xde\xad\xbe\xef")
    _set_index_offset(f"{shard[4]}.idx", 2, 10 ** 9)                               # offset past the end
    _rewrite_shard(f"{shard[5]}.rec", {0: pack(image_header(11), b"GIF89a but nothing else")})  # not an image
    _rewrite_shard(f"{shard[6]}.rec", {1: pack(image_header(99), b"\xff")})                    # label 99
    return folder


def test_verify_lists_every_planted_problem(corrupted, capsys):
    code, out, err = run_cli(capsys, "verify", corrupted)
    assert code == 1, err
    lines = out.splitlines()
    expected = [
        f"{corrupted}/shard-00001.idx: index file not found",
        f"{corrupted}/shard-00002.rec: key 2: truncated record",
        f"{corrupted}/shard-00003.rec: key 1: bad magic 0xefbeadde",
        f"{corrupted}/shard-00004.idx: key 2: offset 1000000000 past the end of {corrupted}/shard-00004.rec",
        f"{corrupted}/shard-00004.rec: byte ",  # the record key 2 used to point at is no longer indexed
        f"{corrupted}/shard-00005.rec: key 0: payload of 23 bytes: not a decodable image",
        f"{corrupted}/shard-00006.rec: key 1: label 99 outside [10, 13) of dataset 'ds'",
        f"{corrupted}/shard-00006.rec: key 1: payload of 1 bytes: not a decodable image",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, out)
    assert lines[-1].startswith(f"verify: {corrupted}: ") and lines[-1].endswith(f"{len(lines) - 1} problem(s)")
    assert len(lines) - 1 == len(expected)


def test_verify_without_index_still_checks_every_record(tmp_path, capsys):
    make_dataset(tmp_path / "a", "a", [3])
    shard = tmp_path / "a" / "shard-00000.rec"
    _rewrite_shard(shard, {1: pack(image_header(0), b"not an image")})
    os.remove(tmp_path / "a" / "shard-00000.idx")
    code, out, _ = run_cli(capsys, "verify", shard)
    assert code == 1
    assert f"{tmp_path}/a/shard-00000.idx: index file not found" in out
    assert f"{shard}: record at byte " in out and "payload of 12 bytes: not a decodable image" in out
    assert "3 records in 1 shard(s) checked: 2 problem(s)" in out


def test_clean_inputs_pass(mxnet_fixtures, tmp_path, capsys):
    for path in (mxnet_fixtures / "insightface_ms1m_style" / "train.rec", mxnet_fixtures / "plain_dali_ready"):
        code, out, _ = run_cli(capsys, "verify", path)
        assert code == 0 and out.strip().endswith("no problems"), out
    make_dataset(tmp_path / "a", "a", [2, 2], num_shards=2)
    code, out, _ = run_cli(capsys, "verify", tmp_path / "a")
    assert code == 0 and "4 records in 2 shard(s) checked: no problems" in out


def test_records_missing_from_the_index_and_entries_inside_records(tmp_path, capsys):
    make_dataset(tmp_path / "a", "a", [3], num_shards=1)
    idx = tmp_path / "a" / "shard-00000.idx"
    entries = read_index(idx)
    idx.write_text(format_index([entries[0], (1, entries[1][1] + 8), entries[2]]))  # key 1 -> mid-record
    code, out, _ = run_cli(capsys, "verify", tmp_path / "a")
    assert code == 1
    assert f"{tmp_path}/a/shard-00000.rec: byte {entries[1][1]}: record not in the index" in out
    assert f"{tmp_path}/a/shard-00000.rec: key 1: bad magic" in out


def test_insightface_label_outside_the_identities(mxnet_fixtures, tmp_path, capsys):
    for name in ("train.rec", "train.idx"):
        shutil.copyfile(mxnet_fixtures / "insightface_ms1m_style" / name, tmp_path / name)
    _rewrite_shard(tmp_path / "train.rec", {3: pack(image_header(6), jpeg_bytes(np.random.default_rng(0)))})
    out = run_cli(capsys, "verify", tmp_path / "train.rec")[1]
    assert f"{tmp_path}/train.rec: key 3: label 6 outside [0, 6) of the 6 identities in the header record" in out


def _training_set(tmp_path, capsys):
    make_dataset(tmp_path / "a", "a", [1, 1], num_shards=2)
    make_dataset(tmp_path / "b", "b", [2, 1], num_shards=1, seed=1)
    assert run_cli(capsys, "build", "--out", tmp_path / "train", tmp_path / "a", tmp_path / "b")[0] == 0
    return tmp_path / "train"


def test_manifest_problems_are_all_listed(tmp_path, capsys):
    train = _training_set(tmp_path, capsys)
    _rewrite_shard(tmp_path / "a" / "shard-00000.rec", {0: pack(image_header(4), jpeg_bytes(np.random.default_rng(5),
                                                                                           (24, 24)))})
    _set_index_offset(train / "train.idx", 3, 12345)
    code, out, _ = run_cli(capsys, "verify", train)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{tmp_path}/a/shard-00000.rec: key 0: label 4 outside [0, 2) of dataset 'a'"
    # shard a/0 grew, so every later record moved: entries 1..4 of train.idx are now wrong
    assert [line.split(": ")[1] for line in lines[1:-1]] == ["key 1", "key 2", "key 3", "key 4"]
    assert all(line.startswith(f"{train}/train.idx: key") for line in lines[1:-1])
    assert lines[-1].endswith("5 problem(s)")


def test_manifest_with_a_missing_shard_and_wrong_offsets(tmp_path, capsys):
    train = _training_set(tmp_path, capsys)
    os.remove(tmp_path / "a" / "shard-00001.rec")
    body = json.loads((train / "manifest.json").read_text())
    body["datasets"][1]["class_offset"] = 5
    (train / "manifest.json").write_text(json.dumps(body))
    code, out, _ = run_cli(capsys, "verify", train)
    assert code == 1
    assert f"{tmp_path}/a/shard-00001.rec: record file not found" in out
    assert f"{train}/manifest.json: dataset 'b': class_offset 5, expected 2" in out
    assert f"{train}/b/shard-00000.rec: key 0: label 2 outside [5, 7) of dataset 'b'" in out  # relabelled copy


def test_duplicate_keys_shared_offsets_and_entries_inside_a_record(tmp_path, capsys):
    inner = pack(image_header(0), jpeg_bytes(np.random.default_rng(1)))
    with RecordWriter(tmp_path / "x.rec") as writer:
        writer.write(0, pack(image_header(0), jpeg_bytes(np.random.default_rng(0))))
        outer_offset = writer.write(1, b"ab" + frame_record(inner))  # a whole record hidden in a payload
    idx = tmp_path / "x.idx"
    entries = read_index(idx)
    hidden = outer_offset + 8 + 2
    idx.write_text(format_index(entries + [(2, hidden), (3, entries[0][1]), (1, 0)]))
    code, out, _ = run_cli(capsys, "verify", tmp_path / "x.rec")
    assert code == 1
    assert f"{idx}: key 1: duplicate key (lines 2 and 5)" in out
    assert f"{idx}: key 2: offset {hidden} is inside another record, not at a record start" in out
    assert f"{idx}: key 3: offset 0 is also key 0's" in out
    assert f"{tmp_path / 'x.rec'}: key 1: bad IRHeader" in out  # b"ab..." is no IRHeader either
