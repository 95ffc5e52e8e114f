"""insightface's train.rec layout: a header record, the images, then one record per identity.

Record 0: flag=2, label=[first identity key, end key]. Keys 1 .. first-1: images. Keys
first .. end-1: identity records, label=[start, end) of that identity's image keys, no payload.
Only the image keys ever reach training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .recordio import RecordIOError, RecordReader, unpack


@dataclass(frozen=True)
class Layout:
    """Which keys of a .rec hold images, and the identity ranges when the file has them."""

    kind: str  # "insightface" or "plain"
    image_keys: list[int]
    identity_ranges: list[tuple[int, int]]  # [start, end) image keys per identity; empty for plain


def _two_ints(reader: RecordReader, key: int, what: str) -> tuple[int, int]:
    header, _ = unpack(reader.read(key))
    labels = np.asarray(header.label)
    if header.flag != 2 or labels.size != 2:
        raise RecordIOError(reader.rec_path, f"key {key}", f"{what} record must have flag=2 and two labels, "
                                                          f"got flag={header.flag}")
    return int(labels[0]), int(labels[1])


def detect_layout(reader: RecordReader) -> Layout:
    """insightface layout when key 0 is a flag=2 header with an empty payload, else plain."""
    keys = reader.keys
    if 0 in reader.index:
        header, body = unpack(reader.read(0))
        if header.flag == 2 and not body:
            return _insightface_layout(reader)
    return Layout("plain", list(keys), [])


def _insightface_layout(reader: RecordReader) -> Layout:
    first_identity, end = _two_ints(reader, 0, "header")
    if not 1 <= first_identity <= end:
        raise RecordIOError(reader.rec_path, "key 0", f"header range [{first_identity}, {end}) is not valid")
    missing = [k for k in range(1, end) if k not in reader.index]
    if missing:
        raise RecordIOError(reader.idx_path, f"key {missing[0]}",
                            f"header says keys 1..{end - 1} exist; {len(missing)} missing from the index")
    ranges = [_two_ints(reader, key, "identity") for key in range(first_identity, end)]
    for key, (start, stop) in zip(range(first_identity, end), ranges):
        if not 1 <= start <= stop <= first_identity:
            raise RecordIOError(reader.rec_path, f"key {key}",
                                f"identity range [{start}, {stop}) outside the image keys [1, {first_identity})")
    return Layout("insightface", list(range(1, first_identity)), ranges)
