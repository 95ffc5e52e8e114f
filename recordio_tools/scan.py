"""Fast label scans of shards (headers only, no payloads), per-class statistics, progress bars.

    >>> with open("shard-00000.rec", "rb") as f:
    ...     header = read_header_at(f, 0, "shard-00000.rec", "key 0")
    >>> class_ids = shard_class_ids("shard-00000.rec", "shard-00000.idx")       # int64 array, index order
    >>> class_stats(class_ids)                                                   # counts, min/median/max
"""

from __future__ import annotations

import sys
from typing import BinaryIO, Iterable, Sequence

import numpy as np

from .recordio import (IRHEADER_SIZE, PART_HEADER_SIZE, FramingError, IRHeader, RecordIOError, class_id_of,
                       parse_part_header, read_index, read_record_at, unpack)

_HEAD_BYTES = PART_HEADER_SIZE + IRHEADER_SIZE + 4 * 16  # room for up to 16 labels after the IRHeader


def progress(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "img"):
    """A tqdm bar on stderr when it is a terminal; the plain iterable otherwise (logs, tests)."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


def read_header_at(f: BinaryIO, offset: int, path: str, where: str) -> IRHeader:
    """The IRHeader of the record at `offset`, reading only its first bytes. Raises RecordIOError."""
    f.seek(offset)
    head = f.read(_HEAD_BYTES)
    try:
        cflag, length = parse_part_header(head[:PART_HEADER_SIZE], offset)
    except FramingError as e:
        raise RecordIOError(path, where, str(e)) from None
    body = head[PART_HEADER_SIZE:PART_HEADER_SIZE + length]
    if cflag == 1 and length < _HEAD_BYTES - PART_HEADER_SIZE:  # split early (magic word in the header)
        body = read_record_at(f, offset, path, where)[0][:_HEAD_BYTES - PART_HEADER_SIZE]
    try:
        return unpack(body)[0]
    except ValueError as e:
        if len(body) == _HEAD_BYTES - PART_HEADER_SIZE:  # more labels than we read: take the slow path
            try:
                return unpack(read_record_at(f, offset, path, where)[0])[0]
            except ValueError as e2:
                raise RecordIOError(path, where, f"bad IRHeader: {e2}") from None
        raise RecordIOError(path, where, f"bad IRHeader: {e}") from None


def class_id_at(f: BinaryIO, offset: int, path: str, where: str) -> int:
    """The exact class id of the record at `offset`; RecordIOError when its label is not one."""
    header = read_header_at(f, offset, path, where)
    try:
        return class_id_of(header)
    except ValueError as e:
        raise RecordIOError(path, where, str(e)) from None


def class_ids_at(rec_path: str, offsets: Sequence[int], keys: Sequence[int], desc: str = "") -> np.ndarray:
    """Class ids of the records at `offsets` (named by `keys` in errors), as int64."""
    ids = np.empty(len(offsets), dtype=np.int64)
    try:
        f = open(rec_path, "rb")
    except FileNotFoundError:
        raise RecordIOError(rec_path, "open", "record file not found") from None
    with f:
        for i, (key, offset) in enumerate(progress(zip(keys, offsets), total=len(keys), desc=desc)):
            ids[i] = class_id_at(f, offset, rec_path, f"key {key}")
    return ids


def shard_class_ids(rec_path: str, idx_path: str, desc: str = "") -> np.ndarray:
    """Class ids of every record of a shard, in index order."""
    entries = read_index(idx_path)
    return class_ids_at(rec_path, [offset for _, offset in entries], [key for key, _ in entries], desc)


def class_stats(class_ids: np.ndarray) -> dict:
    """Number of images and classes, images per class (min/median/max), label range of `class_ids`."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if class_ids.size == 0:
        return {"images": 0, "classes": 0, "images_per_class": None, "label_range": None}
    _, counts = np.unique(class_ids, return_counts=True)
    return {"images": int(class_ids.size), "classes": int(counts.size),
            "images_per_class": {"min": int(counts.min()), "median": float(np.median(counts)),
                                 "max": int(counts.max())},
            "label_range": [int(class_ids.min()), int(class_ids.max())]}
