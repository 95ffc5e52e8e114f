"""`recordio_tools import`: insightface / plain .rec -> shuffled dataset shards with rewritten labels."""

import json
import os
import shutil

import numpy as np
import pytest

from cli_helpers import folder_snapshot, jpeg_bytes, leftover_temporaries, read_dataset, read_shard, run_cli, sha1
from recordio_tools.manifest import read_dataset_info
from recordio_tools.recordio import IRHeader, RecordWriter, image_header, pack

INSIGHTFACE = "insightface_ms1m_style"


def _expected_images(mxnet_fixtures) -> dict[str, int]:
    """SHA-1 of each image payload of the insightface fixture -> its class (as MXNet read it)."""
    rows = json.loads((mxnet_fixtures / INSIGHTFACE / "expected.json").read_text())
    return {row["payload_sha1"]: int(row["label"]) for row in rows if row["flag"] == 0}


def test_import_insightface_fixture(mxnet_fixtures, tmp_path, capsys):
    code, out, err = run_cli(capsys, "import", mxnet_fixtures / INSIGHTFACE / "train.rec", "--out", tmp_path / "ms1m",
                             "--shards", 3, "--class-offset", 100, "--seed", 7)
    assert code == 0, err
    assert "insightface layout, 7 non-image records dropped" in out
    info = read_dataset_info(str(tmp_path / "ms1m"))
    assert (info.name, info.num_classes, info.num_images, info.class_offset) == ("ms1m", 6, 30, 100)
    assert [s.num_images for s in info.shards] == [10, 10, 10]
    expected = _expected_images(mxnet_fixtures)
    got = read_dataset(tmp_path / "ms1m")
    assert len(expected) == 30 and len(got) == 30
    assert {sha1(image): label - 100 for label, image in got} == expected
    assert [expected[sha1(image)] for _, _, image in read_shard(tmp_path / "ms1m" / "shard-00000.rec")] != \
        sorted(expected[sha1(image)] for _, _, image in read_shard(tmp_path / "ms1m" / "shard-00000.rec"))
    classes = json.loads((tmp_path / "ms1m" / "classes.json").read_text())
    assert classes["layout"] == "insightface" and classes["source_labels"] == [0, 1, 2, 3, 4, 5]


def test_import_accepts_the_folder_and_is_deterministic_per_seed(mxnet_fixtures, tmp_path, capsys):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run_cli(capsys, "import", mxnet_fixtures / INSIGHTFACE, "--out", tmp_path / name, "--name", "x",
                       "--seed", seed)[0] == 0
    assert folder_snapshot(tmp_path / "a", with_mark=False) == folder_snapshot(tmp_path / "b", with_mark=False)
    assert read_dataset(tmp_path / "a") != read_dataset(tmp_path / "c")


def _plain_rec(path, labels, flag2=False, seed=0):
    rng = np.random.default_rng(seed)
    with RecordWriter(path) as writer:
        for key, label in enumerate(labels):
            header = image_header(label, key) if flag2 else IRHeader(0, float(label), key, 0)
            writer.write(key, pack(header, jpeg_bytes(rng)))


def test_import_plain_rec_renumbers_sparse_labels(tmp_path, capsys):
    _plain_rec(tmp_path / "plain.rec", [42, 5, 17, 17, 5, 42, 42])
    assert run_cli(capsys, "import", tmp_path / "plain.rec", "--out", tmp_path / "ds")[0] == 0
    assert json.loads((tmp_path / "ds" / "classes.json").read_text())["source_labels"] == [5, 17, 42]
    assert sorted(label for label, _ in read_dataset(tmp_path / "ds")) == [0, 0, 1, 1, 2, 2, 2]
    info = read_dataset_info(str(tmp_path / "ds"))
    assert (info.num_classes, info.num_images) == (3, 7)


def test_import_keeps_large_class_ids_exact(tmp_path, capsys):
    big = (1 << 24) + 1  # not representable as one float32
    _plain_rec(tmp_path / "big.rec", [big, big + 2, big + 1], flag2=True)
    assert run_cli(capsys, "import", tmp_path / "big.rec", "--out", tmp_path / "ds", "--class-offset", big)[0] == 0
    assert json.loads((tmp_path / "ds" / "classes.json").read_text())["source_labels"] == [big, big + 1, big + 2]
    assert sorted(label for label, _ in read_dataset(tmp_path / "ds")) == [big, big + 1, big + 2]


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming file and key, no output left behind


@pytest.fixture
def fixture_copy(mxnet_fixtures, tmp_path):
    folder = tmp_path / "src"
    shutil.copytree(mxnet_fixtures / INSIGHTFACE, folder)
    for path in folder.iterdir():
        os.chmod(path, 0o644)
    return folder


def _import_fails(capsys, tmp_path, source) -> str:
    code, _, err = run_cli(capsys, "import", source, "--out", tmp_path / "out")
    assert code == 2
    assert err.startswith("recordio_tools import: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not leftover_temporaries(tmp_path)
    return err


def test_missing_idx(fixture_copy, tmp_path, capsys):
    (fixture_copy / "train.idx").unlink()
    assert f"{fixture_copy / 'train.idx'}: open: index file not found" in _import_fails(capsys, tmp_path,
                                                                                       fixture_copy / "train.rec")


def test_truncated_rec(fixture_copy, tmp_path, capsys):
    rec = fixture_copy / "train.rec"
    expected = json.loads((fixture_copy / "expected.json").read_text())
    last_image = next(row for row in expected if row["key"] == 30)
    rec.write_bytes(rec.read_bytes()[:last_image["offset"] + 100])  # cuts image 30 and drops identity records
    err = _import_fails(capsys, tmp_path, rec)
    assert str(rec) in err and "key 3" in err  # key 30 truncated, or identity key 31+ missing
    assert "recordio_tools verify" in err


def test_truncated_image_record(fixture_copy, tmp_path, capsys):
    """An index entry whose record runs past the end of the file (plain layout)."""
    _plain_rec(tmp_path / "plain.rec", [0, 1, 2])
    rec = tmp_path / "plain.rec"
    rec.write_bytes(rec.read_bytes()[:-50])
    err = _import_fails(capsys, tmp_path, rec)
    assert f"{rec}: key 2: truncated record" in err and "recordio_tools verify" in err


def test_wrong_magic(fixture_copy, tmp_path, capsys):
    rec = fixture_copy / "train.rec"
    expected = json.loads((fixture_copy / "expected.json").read_text())
    data = bytearray(rec.read_bytes())
    offset = next(row["offset"] for row in expected if row["key"] == 12)
    data[offset:offset + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(data))
    assert f"{rec}: key 12: bad magic 0x00000000" in _import_fails(capsys, tmp_path, rec)


def _set_index_offset(idx, key: int, offset: int) -> None:
    lines = [line.split("\t") for line in idx.read_text().splitlines()]
    idx.write_text("".join(f"{k}\t{offset if int(k) == key else o}\n" for k, o in lines))


def test_index_offset_past_the_end(fixture_copy, tmp_path, capsys):
    _set_index_offset(fixture_copy / "train.idx", 5, 99999999)
    err = _import_fails(capsys, tmp_path, fixture_copy / "train.rec")
    assert f"{fixture_copy / 'train.idx'}: key 5: offset 99999999 past the end" in err


def test_non_image_payload(tmp_path, capsys):
    rng = np.random.default_rng(0)
    with RecordWriter(tmp_path / "plain.rec") as writer:
        writer.write(0, pack(image_header(0), jpeg_bytes(rng)))
        writer.write(1, pack(image_header(1), b"this is text, not an image"))
    assert f"{tmp_path / 'plain.rec'}: key 1: payload of 26 bytes is not an image" in _import_fails(
        capsys, tmp_path, tmp_path / "plain.rec")


def test_failed_import_keeps_the_previous_output(fixture_copy, tmp_path, capsys):
    assert run_cli(capsys, "import", fixture_copy, "--out", tmp_path / "out")[0] == 0
    before = folder_snapshot(tmp_path / "out")
    (fixture_copy / "train.idx").unlink()
    assert run_cli(capsys, "import", fixture_copy, "--out", tmp_path / "out")[0] == 2
    assert folder_snapshot(tmp_path / "out") == before and not leftover_temporaries(tmp_path)
