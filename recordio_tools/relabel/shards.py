"""The shards of a training set as a relabel sees them, and the in-place rewrite of one shard: every
indexed record's label bytes replaced by its fused id (records keep their sizes and offsets), the
label checks made before any shard changes, and the old and new SHA-256 of the file."""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO

from ..manifest import DatasetInfo, Manifest, ManifestError
from ..recordio import (IRHEADER_SIZE, MAGIC_BYTES, PART_HEADER_SIZE, FramingError, RecordIOError, class_id_of,
                        class_label, iter_parts, join_parts, read_index, unpack)
from ..scan import read_header_at
from .helpers import BUFFER, _KillHook
from .label_maps import LabelMap

FLOAT_EXACT_LIMIT = 1 << 24  # float32 holds every integer below this exactly
_HEADER_PREFIX = IRHEADER_SIZE + 4 * 10  # payload bytes decoded for the label (up to 10 label floats)


@dataclass
class _Shard:
    rel: str  # rec path as manifest.json names it (the journal's key)
    rec: str
    idx: str
    num_images: int
    dataset: DatasetInfo

    @property
    def label_range(self) -> tuple[int, int]:
        return self.dataset.class_offset, self.dataset.class_offset + self.dataset.num_classes


def _shards(manifest: Manifest) -> list[_Shard]:
    return [_Shard(s.rec, os.path.normpath(os.path.join(manifest.root, s.rec)),
                   os.path.normpath(os.path.join(manifest.root, s.idx)), s.num_images, d)
            for d in manifest.datasets for s in d.shards]


def _shard_index(shard: _Shard) -> dict[int, int]:
    """Byte offset -> key of the shard's .idx, its count checked against the manifest."""
    entries = read_index(shard.idx)
    by_offset = {offset: key for key, offset in entries}
    if len(by_offset) != len(entries):
        raise RecordIOError(shard.idx, "index", "two keys share one byte offset")
    if len(entries) != shard.num_images:
        raise ManifestError(f"{shard.idx}: {len(entries)} records but the manifest says {shard.num_images}; "
                            "run `recordio_tools verify` on the training set")
    return by_offset


def _new_label(class_id: int, flag: int, label_map: LabelMap, shard: _Shard, key: int) -> tuple[int, bytes]:
    """(payload offset, bytes) of the fused label replacing the record's label."""
    lo, hi = shard.label_range
    if not lo <= class_id < hi:
        raise RecordIOError(shard.rec, f"key {key}", f"label {class_id} outside dataset {shard.dataset.name!r}'s "
                                                     f"classes [{lo}, {hi}) (already relabelled? run "
                                                     "`recordio_tools verify`)")
    fused = int(label_map.mapping[class_id])
    if flag == 0:
        if fused >= FLOAT_EXACT_LIMIT:
            raise RecordIOError(shard.rec, f"key {key}", f"one-float label (flag 0) cannot hold fused id {fused} "
                                                         f"exactly (>= 2^24) and the record cannot grow in place; "
                                                         "use --out, which writes exact two-float labels")
        return 4, struct.pack("<f", fused)
    return IRHEADER_SIZE, class_label(fused).tobytes()


def _precheck(shard: _Shard, label_map: LabelMap) -> None:
    """Every indexed record's label is valid and can take its fused id in place (header bytes only)."""
    by_offset = _shard_index(shard)
    with open(shard.rec, "rb") as f:
        for offset, key in by_offset.items():
            header = read_header_at(f, offset, shard.rec, f"key {key}")
            try:
                class_id = class_id_of(header)
            except ValueError as e:
                raise RecordIOError(shard.rec, f"key {key}", str(e)) from None
            _new_label(class_id, header.flag, label_map, shard, key)


def _read_raw_record(f: BinaryIO, pos: int, path: str) -> tuple[bytearray, list[tuple[int, int]]]:
    """The on-disk bytes of the record at `pos` (f positioned there) and its parts as (start in raw, length)."""
    raw = bytearray()
    parts: list[tuple[int, int]] = []
    try:
        for _, head, _, length, body in iter_parts(f, pos):
            parts.append((len(raw) + PART_HEADER_SIZE, length))
            raw += head
            raw += body
    except FramingError as e:
        raise RecordIOError(path, f"byte {e.pos}", e.bare) from None
    return raw, parts


def _patch_label(raw: bytearray, parts: list[tuple[int, int]], label_map: LabelMap, shard: _Shard, key: int) -> None:
    """Replace the label bytes of the record in `raw`, nothing else."""
    pieces, have = [], -len(MAGIC_BYTES)
    for start, length in parts:  # only as many parts as the label needs
        pieces.append(raw[start:start + length])
        have += len(MAGIC_BYTES) + length  # the magic word dropped before every part but the first
        if have >= _HEADER_PREFIX:
            break
    prefix = join_parts(pieces)
    try:
        header, _ = unpack(bytes(prefix[:_HEADER_PREFIX]))
        class_id = class_id_of(header)
    except ValueError as e:
        raise RecordIOError(shard.rec, f"key {key}", str(e)) from None
    at, label = _new_label(class_id, header.flag, label_map, shard, key)
    if any(label[i:i + 4] == MAGIC_BYTES for i in range(0, len(label), 4)):  # cannot happen for ids >= 0
        raise RecordIOError(shard.rec, f"key {key}", "new label bytes equal the RecordIO magic word; use --out")
    payload_pos = 0
    for i, (start, length) in enumerate(parts):
        if i:
            payload_pos += len(MAGIC_BYTES)  # the magic word dropped between parts
        if payload_pos <= at and at + len(label) <= payload_pos + length:
            begin = start + at - payload_pos
            raw[begin:begin + len(label)] = label
            return
        payload_pos += length
    raise RecordIOError(shard.rec, f"key {key}", "label bytes straddle a magic-word split; use --out")


def _write_relabelled(shard: _Shard, tmp: str, label_map: LabelMap, kill: _KillHook) -> tuple[str, str]:
    """Write the relabelled copy of `shard` to `tmp` (fsynced); (old SHA-256, new SHA-256) of the file."""
    by_offset = _shard_index(shard)
    size = os.path.getsize(shard.rec)
    old_hash, new_hash = hashlib.sha256(), hashlib.sha256()
    seen = 0
    with open(shard.rec, "rb", buffering=BUFFER) as src, open(tmp, "wb", buffering=BUFFER) as out, \
            _Bar(shard) as bar:
        pos = 0
        while pos < size:
            raw, parts = _read_raw_record(src, pos, shard.rec)
            old_hash.update(raw)
            key = by_offset.get(pos)
            if key is not None:
                _patch_label(raw, parts, label_map, shard, key)
                seen += 1
                bar.update()
            new_hash.update(raw)
            out.write(raw)
            pos += len(raw)
            if key is not None:
                kill("record")
        out.flush()
        os.fsync(out.fileno())
    if seen != len(by_offset):
        raise RecordIOError(shard.idx, "index", f"{len(by_offset) - seen} of its offsets are not record starts in "
                                                f"{shard.rec}; run `recordio_tools verify`")
    return old_hash.hexdigest(), new_hash.hexdigest()


class _Bar:
    """A per-shard progress bar on a terminal, nothing otherwise."""

    def __init__(self, shard: _Shard):
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=shard.num_images, desc=f"relabel {shard.rel}", unit="img", dynamic_ncols=True,
                             leave=False)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
