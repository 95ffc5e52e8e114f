"""RecordIO in MXNet's byte format (dmlc-core recordio + mxnet.recordio's IRHeader).

On disk a record is one or more parts, each::

    uint32 magic 0xced7230a | uint32 lrec = cflag << 29 | length | payload | zero pad to 4 bytes

cflag 0 is a whole record; 1/2/3 are the first/middle/last part of a record that the writer
split wherever the magic word occurred, 4-byte aligned, inside the payload (that occurrence is
dropped on write and restored on read). The `.idx` is text, `key<TAB>byte offset` per line.

This module is the only place that knows the framing. Readers that other modules reuse:
`decode_part_header` / `parse_part_header` (one 8-byte part header), `iter_parts` (the parts of the
record at an offset), `read_record_at` (a record's payload, split parts reassembled), `record_end`
and `next_record_start` (a header-only scan and its resync), `parse_image_header` (the class id and
the image start of an image record, fast for our exact-id records).

An image record's payload starts with IRHeader (uint32 flag, float32 label, uint64 id, uint64 id2);
when flag > 0 the header's label field is unused and `flag` float32 labels follow it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from .errors import UserError
from .files import temp_name, write_text_atomic

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART_HEADER = struct.Struct("<II")
_IRHEADER = struct.Struct("<IfQQ")
_TWO_FLOATS = struct.Struct("<ff")
_MAX_PART_LEN = (1 << 29) - 1

PART_HEADER_SIZE = _PART_HEADER.size
IRHEADER_SIZE = _IRHEADER.size


class RecordIOError(UserError, ValueError):
    """A malformed RecordIO file; the message names the file and the record key or byte offset."""

    def __init__(self, path: str | os.PathLike, where: str, message: str):
        self.path = os.fspath(path)
        self.where = where
        self.message = message
        super().__init__(f"{self.path}: {where}: {message}")


@dataclass(frozen=True)
class IRHeader:
    """mxnet.recordio.IRHeader. `label` is a float when flag == 0, else a float32 array of `flag` values."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def _encode_lrec(cflag: int, length: int) -> int:
    return (cflag << 29) | length


class FramingError(ValueError):
    """A part header or part that breaks the framing. `str()` names the byte offset (`pos`) inside the
    message; `bare` is the same message without it, for callers that name the offset themselves."""

    def __init__(self, template: str, pos: int):
        self.pos = pos
        self.bare = template.replace("{at}", "")
        super().__init__(template.replace("{at}", f" at byte {pos}"))


def decode_part_header(buf, offset: int = 0) -> tuple[int, int, int]:
    """(magic, cflag, length) of the 8-byte part header at `buf[offset:]`, unchecked."""
    magic, lrec = _PART_HEADER.unpack_from(buf, offset)
    return magic, lrec >> 29, lrec & _MAX_PART_LEN


def parse_part_header(head: bytes, pos: int, first: bool = True) -> tuple[int, int]:
    """(cflag, length) of the part header `head` read at byte `pos`; FramingError when it is short, its
    magic is wrong or its cflag does not fit (`first`: a record's first part, cflag 0 or 1; else 2 or 3)."""
    if len(head) < _PART_HEADER.size:
        raise FramingError("truncated record header{at}", pos)
    magic, lrec = _PART_HEADER.unpack_from(head)  # decode_part_header, inlined: this is every reader's hot path
    cflag, length = lrec >> 29, lrec & _MAX_PART_LEN
    if magic != MAGIC:
        raise FramingError(f"bad magic 0x{magic:08x}{{at}} (expected 0x{MAGIC:08x})", pos)
    if cflag > 3 or (cflag in (0, 1)) != first:
        raise FramingError(f"bad continuation flag {cflag}{{at}}", pos)
    return cflag, length


def padded_length(length: int) -> int:
    """A part's payload length rounded up to the 4-byte alignment of the next part header."""
    return length + (-length % 4)


def read_part(f: BinaryIO, pos: int, first: bool, size: int | None = None) -> tuple[bytes, int, int, bytes | None]:
    """The part at byte `pos` of `f` (f positioned there): (8 header bytes, cflag, length, padded body).
    With `size` (the file size) the body is not read (None) and a part running past `size` is truncated.
    Raises FramingError."""
    head = f.read(_PART_HEADER.size)
    if not head and first:
        raise FramingError("end of file{at}", pos)
    cflag, length = parse_part_header(head, pos, first)
    padded = length + (-length % 4)
    body = None
    if size is None:
        body = f.read(padded)
        present = len(body)
    else:
        present = size - pos - _PART_HEADER.size
    if present < padded:
        raise FramingError(f"truncated record: {length} bytes announced{{at}}, {present} present", pos)
    return head, cflag, length, body


def iter_parts(f: BinaryIO, pos: int, size: int | None = None) -> Iterator[tuple[int, bytes, int, int, bytes | None]]:
    """The parts of the record starting at byte `pos` of `f`, in order: (byte offset, 8 header bytes,
    cflag, length, padded body); `size` as in `read_part`. Raises FramingError."""
    first = True
    f.seek(pos)
    while True:
        if size is not None:
            f.seek(pos)
        head, cflag, length, body = read_part(f, pos, first, size)
        yield pos, head, cflag, length, body
        if cflag in (0, 3):
            return
        pos, first = pos + _PART_HEADER.size + padded_length(length), False


def join_parts(parts: Sequence[bytes]) -> bytes:
    """A split record's payload from its parts' payloads: the magic words the writer dropped restored."""
    return MAGIC_BYTES.join(parts)


def frame_record(payload: bytes) -> bytes:
    """The on-disk bytes of one record, split at aligned magic words exactly as dmlc-core does."""
    size = len(payload)
    if size > _MAX_PART_LEN:
        raise ValueError(f"RecordIO records must be under 2^29 bytes, got {size}")
    view = memoryview(payload)
    out = bytearray()
    part_start = 0
    pos = payload.find(MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (size >> 2) << 2:
        if pos % 4 == 0:
            out += _PART_HEADER.pack(MAGIC, _encode_lrec(1 if part_start == 0 else 2, pos - part_start))
            out += view[part_start:pos]
            part_start = pos + 4
            pos = payload.find(MAGIC_BYTES, part_start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    out += _PART_HEADER.pack(MAGIC, _encode_lrec(3 if part_start else 0, size - part_start))
    out += view[part_start:]
    out += b"\0" * (-size % 4)
    return bytes(out)


def pack_header(header: IRHeader) -> bytes:
    """IRHeader bytes as mxnet.recordio.pack writes them (labels array appended when flag > 0)."""
    if header.flag == 0:
        return _IRHEADER.pack(0, float(header.label), header.id, header.id2)
    labels = np.asarray(header.label, dtype="<f4").reshape(-1)
    if labels.size != header.flag:
        raise ValueError(f"IRHeader flag {header.flag} but {labels.size} labels")
    return _IRHEADER.pack(header.flag, 0.0, header.id, header.id2) + labels.tobytes()


def pack(header: IRHeader, data: bytes) -> bytes:
    return pack_header(header) + data


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record payload into its IRHeader and the data after it (mxnet.recordio.unpack)."""
    if len(record) < IRHEADER_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {IRHEADER_SIZE}-byte IRHeader")
    flag, label, rid, rid2 = _IRHEADER.unpack_from(record)
    body = record[IRHEADER_SIZE:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise ValueError(f"IRHeader flag {flag} needs {4 * flag} label bytes, record has {len(body)}")
        label = np.frombuffer(body, dtype="<f4", count=flag).copy()
        body = body[4 * flag:]
    return IRHeader(flag, label, rid, rid2), body


# Exact class ids. A float32 label is exact only below 2^24, so class ids are stored as two
# floats (flag=2): the nearest float32 and the integer residual. Tools that read label[0] still
# get the id up to rounding; ours add the two back exactly (valid for ids below 2^48).
# Such records carry EXACT_ID_MARK in the header's id2 field (unused by MXNet and insightface), so
# a foreign two-float label like [identity, variant] is never mistaken for one: a record without
# the mark is read as MXNet multi-label records are by insightface, class = label[0].
EXACT_LIMIT = 1 << 48  # class ids the two-float label stores exactly
_FLOAT32_EXACT = 1 << 24
EXACT_ID_MARK = int.from_bytes(b"FFEXACT1", "little")


def class_label(class_id: int) -> np.ndarray:
    """The two-float label that stores `class_id` exactly."""
    if not 0 <= class_id < EXACT_LIMIT:
        raise ValueError(f"class id {class_id} outside [0, 2^48)")
    approx = np.float32(class_id)
    return np.array([approx, np.float32(class_id - int(approx))], dtype="<f4")


def class_id_of(header: IRHeader) -> int:
    """The class id stored in a header: flag 0 (one float), our exact encoding (flag 2 + EXACT_ID_MARK:
    float + residual), or a foreign multi-label record (flag > 0: label[0], as insightface reads it)."""
    if header.flag == 0:
        value = float(header.label)
        if not value.is_integer() or value < 0:
            raise ValueError(f"label {value} is not a class id")
        return int(value)
    labels = np.asarray(header.label)
    if header.flag == 2 and header.id2 == EXACT_ID_MARK:
        if not all(float(v).is_integer() for v in labels) or labels[0] < 0:
            raise ValueError(f"label {labels.tolist()} (flag 2, exact id) is not a class id")
        return int(labels[0]) + int(labels[1])
    first = float(labels[0])
    if not first.is_integer() or first < 0:
        raise ValueError(f"label[0] {first} of multi-label {labels.tolist()} (flag {header.flag}) is not a class id")
    if first >= _FLOAT32_EXACT:
        raise ValueError(f"label[0] {first:.0f} of multi-label {labels.tolist()} is above 2^24, where float32 is "
                         "not exact, and the record lacks the exact-id mark (id2); re-import it from its source")
    return int(first)


def class_ids_from_labels(labels: np.ndarray) -> np.ndarray:
    """Vectorised `class_id_of` for a batch of labels of our shards (DALI gives the labels without id2):
    shape [N] or [N,1] (flag 0) or [N,2] (flag 2, exact ids)."""
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    if labels.shape[1] == 1:
        return labels[:, 0].astype(np.int64)
    return labels[:, 0].astype(np.int64) + labels[:, 1].astype(np.int64)


def image_header(class_id: int, record_id: int = 0) -> IRHeader:
    """An image record header holding `class_id` exactly (two floats, marked in id2)."""
    return IRHeader(2, class_label(class_id), record_id, EXACT_ID_MARK)


def parse_image_header(payload: bytes) -> tuple[int, int]:
    """(start of the image data, exact class id) of an image record payload (flag 0, our exact two-float
    ids read without building an IRHeader, or a foreign multi-label record). Raises ValueError/struct.error."""
    flag, label, _, id2 = _IRHEADER.unpack_from(payload)
    if flag == 2 and id2 == EXACT_ID_MARK:
        first, residual = _TWO_FLOATS.unpack_from(payload, IRHEADER_SIZE)
        if first.is_integer() and residual.is_integer() and first >= 0:
            return IRHEADER_SIZE + 8, int(first) + int(residual)
    header, _ = unpack(payload[:IRHEADER_SIZE + 4 * flag])
    return IRHEADER_SIZE + 4 * flag, class_id_of(header)


# ---------------------------------------------------------------------------------------------
# Index files


INDEX_LIMIT = 1 << 63  # keys and offsets are int64 wherever they are used


def read_index(idx_path: str | os.PathLike) -> list[tuple[int, int]]:
    """(key, offset) pairs of a .idx file in file order."""
    entries = []
    try:
        with open(idx_path, "r", encoding="ascii") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) != 2:
                    raise RecordIOError(idx_path, f"line {line_no}", f"expected 'key<TAB>offset', got {line.strip()!r}")
                try:
                    key, offset = int(fields[0]), int(fields[1])
                except ValueError:
                    raise RecordIOError(idx_path, f"line {line_no}", f"not integers: {line.strip()[:80]!r}") from None
                if not (0 <= key < INDEX_LIMIT and 0 <= offset < INDEX_LIMIT):
                    raise RecordIOError(idx_path, f"line {line_no}", f"key or offset outside [0, 2^63): "
                                                                   f"{line.strip()[:80]!r}")
                entries.append((key, offset))
    except FileNotFoundError:
        raise RecordIOError(idx_path, "open", "index file not found") from None
    except UnicodeDecodeError as e:
        raise RecordIOError(idx_path, f"byte {e.start}", "index file is not text") from None
    return entries


def format_index(entries: Sequence[tuple[int, int]]) -> str:
    return "".join(f"{key}\t{offset}\n" for key, offset in entries)


# ---------------------------------------------------------------------------------------------
# Reading


def read_record_at(f: BinaryIO, offset: int, path: str | os.PathLike, where: str) -> tuple[bytes, int]:
    """The record starting at `offset` and the offset just past it. Raises RecordIOError."""
    f.seek(offset)
    pos, first, parts = offset, True, []
    try:
        while True:
            _, cflag, length, body = read_part(f, pos, first)
            parts.append(body[:length])
            pos += _PART_HEADER.size + len(body)
            if cflag in (0, 3):
                return join_parts(parts), pos
            first = False
    except FramingError as e:
        raise RecordIOError(path, where, str(e)) from None


def record_end(f: BinaryIO, pos: int, size: int) -> int:
    """Offset just past the record starting at `pos` of a file of `size` bytes, reading part headers only.
    Raises FramingError."""
    first = True
    while True:
        f.seek(pos)
        _, cflag, length, _ = read_part(f, pos, first, size)
        pos += _PART_HEADER.size + padded_length(length)
        if cflag in (0, 3):
            return pos
        first = False


def next_record_start(f: BinaryIO, pos: int, size: int) -> int:
    """Resync after a framing error: the next 4-byte-aligned offset after `pos` holding a magic word and a
    first-part cflag (0 or 1), else `size`."""
    pos += 4 - pos % 4
    chunk_size = 1 << 20
    while pos < size:
        f.seek(pos)
        chunk = f.read(chunk_size + _PART_HEADER.size)
        found = chunk.find(MAGIC_BYTES)
        while found != -1 and found < chunk_size:
            if found % 4 == 0 and found + 8 <= len(chunk) and (chunk[found + 7] >> 5) in (0, 1):
                return pos + found
            found = chunk.find(MAGIC_BYTES, found + 1)
        pos += chunk_size
    return size


class RecordReader:
    """Random access by key (with the .idx) and sequential scan of a .rec file.

    >>> with RecordReader("train.rec") as r:          # uses train.idx beside it when present
    ...     header, jpeg = unpack(r.read(5))
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None,
                 require_index: bool = False):
        self.rec_path = os.fspath(rec_path)
        if idx_path is None:
            candidate = os.path.splitext(self.rec_path)[0] + ".idx"
            idx_path = candidate if os.path.exists(candidate) or require_index else None
        self.idx_path = os.fspath(idx_path) if idx_path is not None else None
        try:
            self._file = open(self.rec_path, "rb")
        except FileNotFoundError:
            raise RecordIOError(self.rec_path, "open", "record file not found") from None
        self.size = os.fstat(self._file.fileno()).st_size
        self.index: dict[int, int] = {}
        self.keys: list[int] = []
        if self.idx_path is not None:
            entries = read_index(self.idx_path)
            for line_no, (key, offset) in enumerate(entries, 1):
                if offset < 0 or offset >= self.size:
                    self._file.close()
                    raise RecordIOError(self.idx_path, f"key {key}",
                                        f"offset {offset} past the end of {self.rec_path} ({self.size} bytes)")
                if key in self.index:
                    self._file.close()
                    raise RecordIOError(self.idx_path, f"key {key}", f"duplicate key on line {line_no}")
                self.index[key] = offset
                self.keys.append(key)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, key: int) -> bytes:
        """The payload of record `key` (needs the index)."""
        if self.idx_path is None:
            raise RecordIOError(self.rec_path, f"key {key}", "random access needs the .idx file")
        if key not in self.index:
            raise RecordIOError(self.idx_path, f"key {key}", "key not in index")
        return read_record_at(self._file, self.index[key], self.rec_path, f"key {key}")[0]

    def read_at(self, offset: int) -> bytes:
        return read_record_at(self._file, offset, self.rec_path, f"byte {offset}")[0]

    def scan(self) -> Iterator[tuple[int, bytes]]:
        """(offset, payload) of every record in file order, without the index."""
        pos = 0
        while pos < self.size:
            payload, end = read_record_at(self._file, pos, self.rec_path, f"record at byte {pos}")
            yield pos, payload
            pos = end

    def items(self) -> Iterator[tuple[int, bytes]]:
        """(key, payload) in index order."""
        for key in self.keys:
            yield key, self.read(key)


# ---------------------------------------------------------------------------------------------
# Writing


class RecordWriter:
    """Writes a .rec and its .idx under temporary names; `commit()` renames both into place.

    Used as a context manager it commits on success and removes the temporaries on any error
    or Ctrl-C, so the previous files (if any) stay intact.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = os.fspath(idx_path) if idx_path else os.path.splitext(self.rec_path)[0] + ".idx"
        self._tmp_rec = temp_name(self.rec_path)
        self._tmp_idx = temp_name(self.idx_path)
        self._file = open(self._tmp_rec, "wb")
        self._entries: list[tuple[int, int]] = []
        self._keys: set[int] = set()
        self._pos = 0

    def write(self, key: int, payload: bytes) -> int:
        """Append a record under `key`; returns its byte offset."""
        if key in self._keys:
            raise ValueError(f"{self.rec_path}: duplicate key {key}")
        framed = frame_record(payload)
        self._file.write(framed)
        offset = self._pos
        self._pos += len(framed)
        self._entries.append((key, offset))
        self._keys.add(key)
        return offset

    def __len__(self) -> int:
        return len(self._entries)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        write_text_atomic(self._tmp_idx, format_index(self._entries), already_temp=True)
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)

    def abort(self) -> None:
        self._file.close()
        for path in (self._tmp_rec, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
