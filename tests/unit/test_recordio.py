"""The RecordIO codec against MXNet-written files, DALI, and itself."""

import hashlib
import io
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from recordio_tools.insightface import detect_layout
from recordio_tools.recordio import (MAGIC, IRHeader, RecordIOError, RecordReader, RecordWriter, class_id_of,
                                     class_ids_from_labels, frame_record, image_header, pack, read_record_at, unpack)

FIXTURE_SETS = ["insightface_ms1m_style", "plain_dali_ready"]
MAGIC_BYTES = struct.pack("<I", MAGIC)


def _label_as_json(header: IRHeader):
    return header.label.tolist() if header.flag > 0 else header.label


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_mxnet_fixture_reads_back_as_mxnet_did(mxnet_fixtures, name):
    folder = mxnet_fixtures / name
    expected = json.loads((folder / "expected.json").read_text())
    with RecordReader(folder / "train.rec") as reader:
        assert reader.keys == [row["key"] for row in expected]
        for row in expected:
            assert reader.index[row["key"]] == row["offset"]
            header, data = unpack(reader.read(row["key"]))
            got = dict(flag=header.flag, label=_label_as_json(header), id=header.id, id2=header.id2,
                       payload_len=len(data), payload_sha1=hashlib.sha1(data).hexdigest())
            assert got == {k: row[k] for k in got}, f"key {row['key']}"


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_rewriting_a_fixture_reproduces_mxnet_bytes(mxnet_fixtures, tmp_path, name):
    folder = mxnet_fixtures / name
    with RecordReader(folder / "train.rec") as reader, RecordWriter(tmp_path / "copy.rec") as writer:
        for key, payload in reader.items():
            writer.write(key, payload)
    assert (tmp_path / "copy.rec").read_bytes() == (folder / "train.rec").read_bytes()
    assert (tmp_path / "copy.idx").read_text() == (folder / "train.idx").read_text()


def test_sequential_scan_matches_index(mxnet_fixtures):
    with RecordReader(mxnet_fixtures / "insightface_ms1m_style" / "train.rec") as reader:
        scanned = list(reader.scan())
        assert [offset for offset, _ in scanned] == [reader.index[k] for k in reader.keys]
        assert [payload for _, payload in scanned] == [payload for _, payload in reader.items()]


def test_insightface_layout_keeps_only_images(mxnet_fixtures):
    with RecordReader(mxnet_fixtures / "insightface_ms1m_style" / "train.rec") as reader:
        layout = detect_layout(reader)
        assert layout.kind == "insightface"
        assert layout.image_keys == list(range(1, 31))
        assert layout.identity_ranges == [(1 + 5 * i, 6 + 5 * i) for i in range(6)]
        for key in layout.image_keys:
            header, data = unpack(reader.read(key))
            assert data[:2] == b"\xff\xd8", f"key {key} is not a JPEG"
    with RecordReader(mxnet_fixtures / "plain_dali_ready" / "train.rec") as reader:
        assert detect_layout(reader).kind == "plain"


# Payloads that contain the magic word at aligned and unaligned positions, so records split.
_chunks = st.sampled_from([MAGIC_BYTES, b"\x0a\x23", b"\xd7\xce", b"abc", b"\0", b"xyzw"])
payloads = st.one_of(st.binary(max_size=64), st.lists(_chunks, max_size=24).map(b"".join))


@settings(max_examples=150, deadline=None)
@given(records=st.lists(payloads, max_size=12))
def test_round_trip_any_payload(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("rt") / "x.rec"
    with RecordWriter(path) as writer:
        for key, payload in enumerate(records):
            writer.write(key, payload)
    assert path.stat().st_size % 4 == 0
    with RecordReader(path) as reader:
        assert [reader.read(k) for k in range(len(records))] == records
        assert [p for _, p in reader.scan()] == records


def test_aligned_magic_splits_into_parts_like_dmlc():
    payload = b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"ij"
    framed = frame_record(payload)
    words = struct.unpack(f"<{len(framed) // 4}I", framed)
    lrecs = [words[i + 1] for i, w in enumerate(words) if w == MAGIC and i + 1 < len(words)]
    assert [(lrec >> 29, lrec & ((1 << 29) - 1)) for lrec in lrecs] == [(1, 4), (2, 4), (3, 2)]
    unaligned = b"a" + MAGIC_BYTES + b"bcd"
    assert frame_record(unaligned)[:8] == struct.pack("<II", MAGIC, len(unaligned))


def test_multi_float_labels_round_trip():
    header = IRHeader(3, np.array([1.5, -2.0, 7.25], dtype=np.float32), 11, 12)
    got, data = unpack(pack(header, b"payload"))
    assert (got.flag, got.label.tolist(), got.id, got.id2, data) == (3, [1.5, -2.0, 7.25], 11, 12, b"payload")


@pytest.mark.parametrize("class_id", [0, 1, 2**24 - 1, 2**24, 2**24 + 1, 2**24 + 3, 30_000_000, 30_000_001,
                                      2**31 + 5, 2**40 + 7])
def test_class_ids_survive_exactly(class_id):
    header, _ = unpack(pack(image_header(class_id), b""))
    assert class_id_of(header) == class_id
    assert class_ids_from_labels(header.label[None, :])[0] == class_id


def test_float32_alone_would_lose_large_ids():
    assert int(np.float32(2**24 + 1)) != 2**24 + 1  # why labels use two floats


def _jpeg(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(out, "JPEG", quality=95)
    return out.getvalue()


def _jpeg_with_magic_inside(value: int) -> bytes:
    """A valid JPEG whose COM segment puts the magic word at a 4-byte-aligned payload offset."""
    jpeg = _jpeg(value)
    prefix_len = 24 + 8  # IRHeader + two label floats precede the JPEG in the record
    comment = b"\0" * ((-(prefix_len + 2 + 4)) % 4) + MAGIC_BYTES * 3
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    return jpeg[:2] + segment + jpeg[2:]


def _count_parts(framed: bytes) -> int:
    count, pos = 0, 0
    while pos < len(framed):
        magic, lrec = struct.unpack_from("<II", framed, pos)
        assert magic == MAGIC
        length = lrec & ((1 << 29) - 1)
        pos += 8 + length + (-length % 4)
        count += 1
    return count


def test_dali_reads_our_shards_with_exact_ids(tmp_path):
    pipeline_def = pytest.importorskip("nvidia.dali").pipeline_def
    from nvidia.dali import fn

    class_ids = [0, 7, 2**24 + 1, 30_000_000, 30_000_001, 12]
    images = [_jpeg_with_magic_inside(40 * i) if i % 2 else _jpeg(40 * i) for i in range(len(class_ids))]
    with RecordWriter(tmp_path / "s.rec") as writer:
        for key, (class_id, jpeg) in enumerate(zip(class_ids, images)):
            writer.write(key, pack(image_header(class_id, key), jpeg))
    parts = [_count_parts(frame_record(pack(image_header(0), j))) for j in images]
    assert max(parts) == 4 and min(parts) == 1  # the magic-bearing JPEGs are stored as multi-part records

    @pipeline_def(batch_size=len(class_ids), num_threads=1, device_id=None)
    def pipe():
        jpegs, labels = fn.readers.mxnet(path=[str(tmp_path / "s.rec")], index_path=[str(tmp_path / "s.idx")],
                                         random_shuffle=False)
        return jpegs, labels, fn.decoders.image(jpegs, device="cpu")

    p = pipe()
    p.build()
    jpegs, labels, decoded = p.run()
    got_ids = class_ids_from_labels(np.stack([np.asarray(labels[i]) for i in range(len(class_ids))]))
    assert got_ids.tolist() == class_ids
    for i, jpeg in enumerate(images):
        assert np.asarray(jpegs[i]).tobytes() == jpeg
        assert abs(int(np.asarray(decoded[i]).mean()) - 40 * i) <= 2


def _write_three(path):
    with RecordWriter(path) as writer:
        for key in range(3):
            writer.write(key, pack(image_header(key), _jpeg(key)))
    return path


def test_missing_index_is_named(tmp_path):
    rec = _write_three(tmp_path / "a.rec")
    (tmp_path / "a.idx").unlink()
    with pytest.raises(RecordIOError, match=r"a\.idx: open: index file not found"):
        RecordReader(rec, require_index=True)


def test_truncated_record_names_file_and_key(tmp_path):
    rec = _write_three(tmp_path / "a.rec")
    rec.write_bytes(rec.read_bytes()[:-10])
    with RecordReader(rec) as reader:
        with pytest.raises(RecordIOError, match=r"a\.rec: key 2: truncated record"):
            reader.read(2)


def test_wrong_magic_names_file_and_key(tmp_path):
    rec = _write_three(tmp_path / "a.rec")
    with RecordReader(rec) as reader:
        offset = reader.index[1]
    data = bytearray(rec.read_bytes())
    data[offset:offset + 4] = b"JUNK"
    rec.write_bytes(bytes(data))
    with RecordReader(rec) as reader:
        with pytest.raises(RecordIOError, match=r"a\.rec: key 1: bad magic"):
            reader.read(1)


def test_index_offset_past_end_is_named(tmp_path):
    _write_three(tmp_path / "a.rec")
    (tmp_path / "a.idx").write_text("0\t0\n1\t999999\n")
    with pytest.raises(RecordIOError, match=r"a\.idx: key 1: offset 999999 past the end"):
        RecordReader(tmp_path / "a.rec")


def test_writer_interrupted_leaves_previous_file(tmp_path):
    rec = _write_three(tmp_path / "a.rec")
    before = rec.read_bytes(), (tmp_path / "a.idx").read_text()
    with pytest.raises(KeyboardInterrupt):
        with RecordWriter(rec) as writer:
            writer.write(0, b"new")
            raise KeyboardInterrupt
    assert (rec.read_bytes(), (tmp_path / "a.idx").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx", "a.rec"]


def test_read_record_at_end_of_file(tmp_path):
    rec = _write_three(tmp_path / "a.rec")
    with open(rec, "rb") as f:
        with pytest.raises(RecordIOError, match="end of file"):
            read_record_at(f, rec.stat().st_size, rec, "key 9")
