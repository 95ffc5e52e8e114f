"""insightface's train.rec layout: a header record, the images, then one record per identity.

Record 0: flag=2, label=[first identity key, end key]. Keys 1 .. first-1: images. Keys
first .. end-1: identity records, label=[start, end) of that identity's image keys, no payload.
Only the image keys ever reach training.

Also the steps of `recordio_tools import` (commands/import_.py): `resolve_rec`, `read_layout` (the layout
and every image's class id), `local_labels` and `copy_shuffled` (images to a DatasetWriter).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .images import looks_like_image
from .recordio import RecordIOError, RecordReader, unpack
from .scan import class_ids_at, progress

if TYPE_CHECKING:
    from .shards import DatasetWriter


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


# ---------------------------------------------------------------------------------------------
# Importing


def resolve_rec(path: str) -> str:
    """The .rec named by `path`: the file itself, or train.rec inside a folder."""
    if os.path.isdir(path):
        path = os.path.join(path, "train.rec")
    if not os.path.exists(path):
        raise RecordIOError(path, "open", "record file not found")
    return path


def read_layout(reader: RecordReader) -> tuple[Layout, np.ndarray]:
    """The file's layout and the class id of each of its image records (headers only)."""
    try:
        layout = detect_layout(reader)
    except RecordIOError:
        raise
    except ValueError as e:  # a header or identity record too short for its IRHeader
        raise RecordIOError(reader.rec_path, "header/identity records", str(e)) from None
    offsets = [reader.index[key] for key in layout.image_keys]
    class_ids = class_ids_at(reader.rec_path, offsets, layout.image_keys, desc="labels")
    return layout, class_ids


def local_labels(class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(original ids in local-label order, local label of each image); ids already 0..n-1 are kept."""
    originals, local = np.unique(class_ids, return_inverse=True)
    return originals, local.astype(np.int64)


def copy_shuffled(reader: RecordReader, keys: list[int], labels: np.ndarray, writer: DatasetWriter,
                  seed: int) -> None:
    """Copy the image payloads of `keys` to `writer` in a seeded random order with their local labels."""
    order = np.random.default_rng(seed).permutation(len(keys))
    for i in progress(order, total=len(order), desc="import"):
        key = keys[i]
        _, image = unpack(reader.read(key))
        if not looks_like_image(image):
            raise RecordIOError(reader.rec_path, f"key {key}",
                                f"payload of {len(image)} bytes is not an image (starts with {image[:8]!r})")
        writer.add(int(labels[i]), image)
