"""Apply a fusion label map (source class -> fused class) to a training set: in place, or as a copy.

    recordio_tools relabel data/train --label-map runs/x/fuse-t1_0.700/label_map.json --in-place
    recordio_tools relabel data/train --label-map label_map.json --out data/train_fused
    recordio_tools relabel data/synth --from-overlaps data/synth/overlaps.json --in-place   # ideal map (demo)

The label map is what `fftrain fuse` writes (label_map.json)::

    {"format": "fftrain-label-map", "datasets": [{"name": ..., "num_classes": ...}, ...],
     "num_classes_fused": K, "label_map": [fused class of source class 0, 1, ..., C_src - 1], ...}

It is checked against the training set's manifest.json before anything is read or written: the
format, the dataset names and class counts in manifest order, one entry per source class
(len == the manifest's num_classes) and fused ids contiguous 0..K-1 (K == num_classes_fused when
given). `--from-overlaps overlaps.json` (written by `synth`/`split-overlap`) computes the ideal map
from the ground truth instead. A map's identity is the SHA-256 of its entries as little-endian
int64s, so the same map read from either source has the same hash.

Before anything changes, the label of every record still to be rewritten is read from its header
(header bytes only) and checked: an exact class id (flag 2, or flag 0 with one float) inside its
dataset's range [class_offset, class_offset + num_classes), and, for a flag-0 record, a fused id
below 2^24 (a float32 holds integers exactly only up to there; a flag-0 label cannot become a
two-float label in place since the record would grow: use --out). So a bad record stops the run
before the first shard is touched, not halfway.

--out DIR: a new training set. DIR/<name>/ is one dataset (name "fused" by default) of
num_classes_fused classes whose shards hold the fused ids as exact two-float labels (flag 2),
the image bytes copied unchanged, dealt round robin to --shards shards (default: as many as the
input has); DIR/manifest.json + DIR/train.idx make it a training set any fftrain tool reads, and
DIR/label_map.json is the map applied (its manifest's "relabel" entry names the source set and
the map's hash). DIR is built under a temporary name and replaces DIR as a whole at the end.
The per-record dataset identity is not kept: the copy is one dataset.

--in-place: only the label bytes of each indexed image record change (the IRHeader label for
flag 0, the two floats after it for flag 2), so every record keeps its size and offset and every
shard .idx and the combined train.idx stay valid, byte for byte. Bytes outside indexed records
(none in shards our tools write) are copied unchanged. Each shard is rewritten to a temporary
file beside it (`.shard-NNNNN.rec.relabel-tmp`) and renamed over the original. When every shard
is done, relabel_label_map.json (the map applied) is written beside manifest.json, each dataset
folder's dataset.json gains "labels": "fused", "num_classes_fused" and "label_map_sha256", and
manifest.json gains "labels": "fused", "num_classes_fused", "label_map_sha256" and "label_map_file"
(datasets and shard list kept as they were: their class counts and offsets still describe the
source classes the labels came from). Only shards inside the training-set folder are rewritten:
a dataset `build` referenced from elsewhere (other training sets may use it) is refused, naming
the other manifests found beside it, unless `--copy-referenced` copies it into the training-set
folder first. `recordio_tools verify` and `inspect` check a set fused in place against its fused
classes [0, num_classes_fused), and fftrain trains on it as one dataset "fused" of those classes
(`manifest.training_view`): the source datasets of a merged class are no longer known.

The journal, TRAINSET/relabel.journal.json, always replaced atomically::

    {"format": "fftrain-relabel-journal", "version": 1, "label_map_sha256": ..., "num_classes_fused": K,
     "state": "running" | "complete",
     "shards": {"<rec path as in manifest.json>": {"state": "pending" | "done",
                                                   "old_sha256": ..., "new_sha256": ...}}}

Crash safety (an interruption at any instant, SIGKILL or power loss included):
1. A shard file changes only through os.replace of a complete, fsynced temporary file (and the
   folder is fsynced after it), and rename is atomic: at every instant a shard is wholly old or
   wholly new; a partly written temporary file is never a shard.
2. Per shard the order is: write and fsync the temporary file while hashing the old and the new
   bytes -> journal entry "pending" with both SHA-256s -> rename -> fsync the folder -> journal
   entry "done". So on a rerun a shard the journal does not name was never renamed (old); a
   "done" shard is new; a "pending" shard may be either (killed around the rename), and hashing
   the file decides it: equal to new_sha256 -> done, equal to old_sha256 -> rewrite it, neither
   -> someone else changed the file: stop and say so. (When the map leaves every label of a shard
   as it was, old == new and either answer is right.)
3. Stale temporary files of a killed run have fixed names; the rerun removes them first.
4. manifest.json (and the dataset.json files, the map copy) are written only after every shard is
   done, the journal's "complete" last. A rerun in between finds a running journal with every
   shard done and writes them again (same bytes). A rerun after completion with the same map
   changes nothing; one with a different map is refused (the labels are no longer source
   classes); one with a different map while a journal is unfinished is refused too: finish with
   the map it names (done shards cannot be reverted; a many-to-one map has no inverse). Only a
   journal naming no shard yet (stopped before the first rename could happen) gives way to a new map.
5. One relabel at a time per training set: an exclusive flock on TRAINSET/.relabel.lock (freed by
   the kernel when a process dies, so a killed run never blocks the next).

Testing hook (tests only, never set it otherwise): FFTRAIN_RELABEL_TEST_KILL="POINT:N" makes the
process SIGKILL itself at the Nth occurrence of POINT: "record" (after a record was written to a
temporary shard file: mid-shard), "pending" (journal says pending, rename not yet done), "renamed"
(rename done, journal not yet "done"), "done" (after a shard's journal "done"), "manifest"
(manifest.json written, journal not yet "complete").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import numpy as np

from .errors import UserError
from .manifest import (DATASET_FILE, MANIFEST_FILE, DatasetInfo, Manifest, ManifestError, load_manifest,
                       parse_manifest, read_dataset_info, write_manifest)
from .recordio import IRHEADER_SIZE, MAGIC, RecordIOError, RecordReader, class_id_of, class_label, read_index, unpack
from .scan import progress, read_header_at

LABEL_MAP_FORMAT = "fftrain-label-map"
JOURNAL_FORMAT = "fftrain-relabel-journal"
JOURNAL_FILE = "relabel.journal.json"
LABEL_MAP_COPY = "relabel_label_map.json"  # in place: the map applied, beside manifest.json
OUT_LABEL_MAP = "label_map.json"  # --out: the map applied, in DIR
LOCK_FILE = ".relabel.lock"
TMP_SUFFIX = ".relabel-tmp"
FLOAT_EXACT_LIMIT = 1 << 24  # float32 holds every integer below this exactly
KILL_ENV = "FFTRAIN_RELABEL_TEST_KILL"
KILL_POINTS = ("record", "pending", "renamed", "done", "manifest")

_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART_HEADER = struct.Struct("<II")
_MAX_PART_LEN = (1 << 29) - 1
_HEADER_PREFIX = IRHEADER_SIZE + 4 * 10  # payload bytes decoded for the label (up to 10 label floats)
_BUFFER = 1 << 20


class RelabelError(UserError, ValueError):
    """A label map that does not fit the training set, or a relabel that cannot go on; names the file."""


# ---------------------------------------------------------------------------------------------
# Label maps


@dataclass
class LabelMap:
    """Source class -> fused class, checked against one training set."""

    mapping: np.ndarray  # int64 [num_classes_source]
    num_fused: int
    sha256: str
    source: str  # the file it came from
    body: dict = field(default_factory=dict)  # what is written as the copy of the map

    @property
    def num_source(self) -> int:
        return len(self.mapping)


def label_map_sha256(mapping: np.ndarray) -> str:
    """The map's identity: SHA-256 of its entries as little-endian int64s."""
    return hashlib.sha256(np.ascontiguousarray(mapping, dtype="<i8").tobytes()).hexdigest()


def _check_mapping(values, path: str, manifest: Manifest, num_fused_given) -> tuple[np.ndarray, int]:
    manifest_file = os.path.join(manifest.root, MANIFEST_FILE)
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise RelabelError(f"{path}: \"label_map\" must be a list of integers (fused class of each source class)")
    if len(values) != manifest.num_classes:
        raise RelabelError(f"{path}: label map has {len(values)} entries but {manifest_file} has "
                           f"{manifest.num_classes} source classes (one entry per source class)")
    mapping = np.asarray(values, dtype=np.int64)
    if mapping.size and mapping.min() < 0:
        bad = int(np.flatnonzero(mapping < 0)[0])
        raise RelabelError(f"{path}: source class {bad} maps to negative id {int(mapping[bad])}")
    num_fused = int(mapping.max()) + 1 if mapping.size else 0
    present = np.zeros(num_fused, dtype=bool)
    present[mapping] = True
    if not present.all():
        missing = np.flatnonzero(~present)
        raise RelabelError(f"{path}: fused ids are not contiguous 0..{num_fused - 1}: {len(missing)} unused, "
                           f"first {int(missing[0])} (ids must be 0..K-1 with every id used)")
    if num_fused_given is not None and num_fused_given != num_fused:
        raise RelabelError(f"{path}: num_classes_fused is {num_fused_given} but the map uses ids 0..{num_fused - 1}")
    return mapping, num_fused


def read_label_map(path: str, manifest: Manifest) -> LabelMap:
    """Read label_map.json (from `fftrain fuse`) and check it against `manifest`."""
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except FileNotFoundError:
        raise RelabelError(f"{path}: label map not found (written by `fftrain fuse`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RelabelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(body, dict) or body.get("format") != LABEL_MAP_FORMAT:
        found = body.get("format") if isinstance(body, dict) else type(body).__name__
        raise RelabelError(f"{path}: not an fftrain label map (format={found!r}, expected {LABEL_MAP_FORMAT!r})")
    datasets = body.get("datasets")
    if not isinstance(datasets, list) or not all(isinstance(d, dict) and "name" in d and "num_classes" in d
                                                 for d in datasets):
        raise RelabelError(f"{path}: missing or malformed \"datasets\" (a list of {{name, num_classes}})")
    theirs = [(d["name"], d["num_classes"]) for d in datasets]
    ours = [(d.name, d.num_classes) for d in manifest.datasets]
    if theirs != ours:
        raise RelabelError(f"{path}: datasets {_describe(theirs)} do not match "
                           f"{os.path.join(manifest.root, MANIFEST_FILE)}: {_describe(ours)}")
    given = body.get("num_classes_fused")
    if given is not None and (not isinstance(given, int) or isinstance(given, bool)):
        raise RelabelError(f"{path}: num_classes_fused must be an integer, got {given!r}")
    mapping, num_fused = _check_mapping(body.get("label_map"), path, manifest, given)
    return LabelMap(mapping, num_fused, label_map_sha256(mapping), os.path.abspath(path), body)


def label_map_from_overlaps(path: str, manifest: Manifest) -> LabelMap:
    """The ideal map from an overlaps.json ground truth (synth / split-overlap), checked against `manifest`."""
    from .overlaps import OVERLAPS_FILE, OverlapsError, read_overlaps

    if os.path.isdir(path):
        path = os.path.join(path, OVERLAPS_FILE)
    try:
        overlaps = read_overlaps(path)
    except OverlapsError as e:
        raise RelabelError(str(e)) from None
    theirs = [(d["name"], d["num_classes"], d["class_offset"]) for d in overlaps.datasets]
    ours = [(d.name, d.num_classes, d.class_offset) for d in manifest.datasets]
    if theirs != ours:
        raise RelabelError(f"{path}: datasets (name, classes, offset) {theirs} do not match "
                           f"{os.path.join(manifest.root, MANIFEST_FILE)}: {ours}")
    mapping, num_fused = _check_mapping(overlaps.label_map(), path, manifest, None)
    body = {"format": LABEL_MAP_FORMAT, "from_overlaps": os.path.abspath(path),
            "datasets": [{"name": d.name, "num_classes": d.num_classes} for d in manifest.datasets],
            "num_classes_fused": num_fused, "label_map": mapping.tolist()}
    return LabelMap(mapping, num_fused, label_map_sha256(mapping), os.path.abspath(path), body)


def _describe(pairs: list) -> str:
    shown = ", ".join(f"{n} ({c})" for n, c in pairs[:8])
    return "[" + shown + (", ..." if len(pairs) > 8 else "") + "]"


def _map_copy_text(label_map: LabelMap) -> str:
    body = {**label_map.body, "label_map_sha256": label_map.sha256, "applied_from": label_map.source}
    return json.dumps(body) + "\n"


# ---------------------------------------------------------------------------------------------
# Small file helpers


def _manifest_file(trainset: str) -> str:
    return os.path.join(trainset, MANIFEST_FILE) if os.path.isdir(trainset) else trainset


def _read_json_body(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _temp_of(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TMP_SUFFIX}")


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, text: str) -> None:
    """Write through a fixed-name temporary file (safe under the relabel lock), fsync, rename, fsync the folder."""
    tmp = _temp_of(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BUFFER), b""):
            h.update(block)
    return h.hexdigest()


class _KillHook:
    """FFTRAIN_RELABEL_TEST_KILL="POINT:N": SIGKILL at the Nth POINT (tests of crash safety only)."""

    def __init__(self):
        spec = os.environ.get(KILL_ENV, "")
        self.point, self.at, self.count = None, 0, 0
        if not spec:
            return
        point, _, n = spec.partition(":")
        if point not in KILL_POINTS or not n.isdigit() or int(n) < 1:
            raise RelabelError(f"{KILL_ENV}={spec!r}: expected POINT:N with POINT one of {list(KILL_POINTS)}, N >= 1")
        self.point, self.at = point, int(n)

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        self.count += 1
        if self.count >= self.at:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class _Lock:
    """Exclusive, non-blocking flock on TRAINSET/.relabel.lock."""

    def __init__(self, root: str):
        self.path = os.path.join(root, LOCK_FILE)
        self._file = None

    def __enter__(self):
        import fcntl

        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RelabelError(f"{self.path}: another relabel is running on this training set") from None
        return self

    def __exit__(self, *exc):
        self._file.close()  # closing frees the lock


# ---------------------------------------------------------------------------------------------
# Shards


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
    while True:
        head = f.read(8)
        at = pos + len(raw)
        if len(head) < 8:
            raise RecordIOError(path, f"byte {at}", "truncated record header")
        magic, lrec = _PART_HEADER.unpack(head)
        if magic != MAGIC:
            raise RecordIOError(path, f"byte {at}", f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})")
        cflag, length = lrec >> 29, lrec & _MAX_PART_LEN
        if cflag > 3 or (cflag in (0, 1)) != (not parts):
            raise RecordIOError(path, f"byte {at}", f"bad continuation flag {cflag}")
        padded = length + (-length % 4)
        body = f.read(padded)
        if len(body) < padded:
            raise RecordIOError(path, f"byte {at}", f"truncated record: {length} bytes announced, {len(body)} present")
        parts.append((len(raw) + 8, length))
        raw += head
        raw += body
        if cflag in (0, 3):
            return raw, parts


def _patch_label(raw: bytearray, parts: list[tuple[int, int]], label_map: LabelMap, shard: _Shard, key: int) -> None:
    """Replace the label bytes of the record in `raw`, nothing else."""
    prefix = bytearray()
    for i, (start, length) in enumerate(parts):
        if i:
            prefix += _MAGIC_BYTES
        prefix += raw[start:start + length]
        if len(prefix) >= _HEADER_PREFIX:
            break
    try:
        header, _ = unpack(bytes(prefix[:_HEADER_PREFIX]))
        class_id = class_id_of(header)
    except ValueError as e:
        raise RecordIOError(shard.rec, f"key {key}", str(e)) from None
    at, label = _new_label(class_id, header.flag, label_map, shard, key)
    if any(label[i:i + 4] == _MAGIC_BYTES for i in range(0, len(label), 4)):  # cannot happen for ids >= 0
        raise RecordIOError(shard.rec, f"key {key}", "new label bytes equal the RecordIO magic word; use --out")
    payload_pos = 0
    for i, (start, length) in enumerate(parts):
        if i:
            payload_pos += 4  # the magic word dropped between parts
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
    with open(shard.rec, "rb", buffering=_BUFFER) as src, open(tmp, "wb", buffering=_BUFFER) as out, \
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


# ---------------------------------------------------------------------------------------------
# In place


class _Journal:
    def __init__(self, path: str, body: dict):
        self.path = path
        self.body = body

    @classmethod
    def load(cls, root: str) -> "_Journal | None":
        path = os.path.join(root, JOURNAL_FILE)
        if not os.path.exists(path):
            return None
        try:
            body = _read_json_body(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # never: it is replaced atomically
            raise RelabelError(f"{path}: relabel journal is not valid JSON ({e}); it was edited or damaged") from None
        if body.get("format") != JOURNAL_FORMAT or not isinstance(body.get("shards"), dict):
            raise RelabelError(f"{path}: not a relabel journal (format={body.get('format')!r})")
        return cls(path, body)

    @classmethod
    def start(cls, root: str, label_map: LabelMap) -> "_Journal":
        journal = cls(os.path.join(root, JOURNAL_FILE), {
            "format": JOURNAL_FORMAT, "version": 1, "label_map_sha256": label_map.sha256,
            "label_map_source": label_map.source, "num_classes_fused": label_map.num_fused,
            "state": "running", "shards": {}})
        journal.save()
        return journal

    @property
    def shards(self) -> dict:
        return self.body["shards"]

    def state_of(self, shard: _Shard) -> str | None:
        entry = self.shards.get(shard.rel)
        return entry["state"] if entry else None

    def save(self) -> None:
        _write_atomic(self.path, json.dumps(self.body, indent=1) + "\n")


@dataclass
class InPlaceResult:
    status: str  # "relabelled" or "already" (nothing to do)
    shards_rewritten: int
    shards_total: int
    outside: list[str]  # dataset folders outside the training-set folder whose shards were rewritten


def _resolve_pending(journal: _Journal, shards: list[_Shard]) -> None:
    """Decide every "pending" shard from its hash (see the crash-safety argument)."""
    changed = False
    for shard in shards:
        entry = journal.shards.get(shard.rel)
        if not entry or entry["state"] != "pending":
            continue
        digest = sha256_file(shard.rec)
        if digest == entry["new_sha256"]:
            entry["state"] = "done"
        elif digest == entry["old_sha256"]:
            del journal.shards[shard.rel]
        else:
            raise RelabelError(f"{shard.rec}: matches neither its contents before relabel nor after (journal "
                               f"{journal.path}); it was changed by something else: restore it from a backup")
        changed = True
    if changed:
        journal.save()


def _outside_folders(manifest: Manifest, shards: list[_Shard]) -> list[str]:
    root = os.path.realpath(manifest.root)
    folders = sorted({os.path.dirname(s.rec) for s in shards})
    return [f for f in folders if not (os.path.realpath(f) + os.sep).startswith(root + os.sep)]


def _finish(manifest_file: str, manifest: Manifest, shards: list[_Shard], label_map: LabelMap,
            journal: _Journal, kill: _KillHook) -> None:
    """Every shard done: the map copy, dataset.json marks, manifest.json, then the journal's "complete"."""
    _write_atomic(os.path.join(manifest.root, LABEL_MAP_COPY), _map_copy_text(label_map))
    for folder in sorted({os.path.dirname(s.rec) for s in shards}):
        path = os.path.join(folder, DATASET_FILE)
        if os.path.exists(path):
            body = _read_json_body(path)
            body.update({"labels": "fused", "label_map_sha256": label_map.sha256,
                         "num_classes_fused": label_map.num_fused})
            _write_atomic(path, json.dumps(body, indent=1) + "\n")
    body = _read_json_body(manifest_file)
    body.update({"labels": "fused", "num_classes_fused": label_map.num_fused,
                 "label_map_sha256": label_map.sha256, "label_map_file": LABEL_MAP_COPY})
    _write_atomic(manifest_file, json.dumps(body, indent=1) + "\n")
    kill("manifest")
    journal.body["state"] = "complete"
    journal.save()


def other_users(manifest: Manifest, folders: list[str]) -> list[str]:
    """Other manifest.json files (beside `folders` and beside the training set, one level down) whose
    shards lie in `folders`."""
    import glob

    wanted = {os.path.realpath(f) for f in folders}
    bases = {os.path.dirname(os.path.realpath(f)) for f in folders} | {os.path.dirname(os.path.realpath(manifest.root))}
    found = {os.path.realpath(p) for base in bases
             for p in [os.path.join(base, MANIFEST_FILE), *glob.glob(os.path.join(base, "*", MANIFEST_FILE))]
             if os.path.exists(p)}
    found.discard(os.path.realpath(os.path.join(manifest.root, MANIFEST_FILE)))
    users = []
    for path in sorted(found):
        try:
            other = parse_manifest(path)
        except ManifestError:
            continue
        if any(os.path.realpath(os.path.dirname(rec)) in wanted for rec in other.rec_paths()):
            users.append(path)
    return users


def _refuse_referenced(manifest_file: str, manifest: Manifest, outside: list[str]) -> None:
    users = other_users(manifest, outside)
    used_by = f"also used by {', '.join(users)}" if users else "no other training set found beside them"
    raise RelabelError(f"{manifest_file}: --in-place would rewrite shards this training set only references, in "
                       f"{', '.join(outside)} ({used_by}); use --out for a fused copy, or --copy-referenced to copy "
                       f"them into {manifest.root} first")


def copy_referenced(manifest_file: str, manifest: Manifest, outside: list[str], log: Callable[[str], None]) -> Manifest:
    """Copy the datasets held in `outside` folders into the training-set folder and point the manifest at
    the copies (each copy complete or absent; the manifest rewritten last)."""
    from .commands.build import copy_folder_name, relabel_copy
    from .shards import atomic_directory

    wanted = {os.path.realpath(f) for f in outside}
    infos, folders = [], []
    for info in manifest.datasets:
        folder = os.path.dirname(os.path.join(manifest.root, info.shards[0].rec))
        local = read_dataset_info(folder)
        if os.path.realpath(folder) in wanted:
            target = os.path.join(manifest.root, copy_folder_name(info.name))
            if os.path.exists(target):
                raise RelabelError(f"{target}: exists; cannot copy dataset {info.name!r} from {folder} there")
            log(f"relabel: copying {folder} into {target} (it is referenced, not owned)")
            with atomic_directory(target) as tmp:
                local = relabel_copy(folder, local, tmp, info.class_offset)
            folder = target
        infos.append(local)
        folders.append(folder)
    write_manifest(manifest.root, infos, folders)
    return load_manifest(manifest_file)


def relabel_in_place(trainset: str, label_map: LabelMap, log: Callable[[str], None] = print,
                     copy_referenced_shards: bool = False) -> InPlaceResult:
    """Write the fused labels into the training set's shards in place; resumes an interrupted run.

    Only shards inside the training-set folder are rewritten: datasets it references from elsewhere
    (which other training sets may use) are refused, or copied in first with `copy_referenced_shards`."""
    manifest_file = _manifest_file(trainset)
    manifest = load_manifest(manifest_file)
    shards = _shards(manifest)
    kill = _KillHook()
    with _Lock(manifest.root):
        body = _read_json_body(manifest_file)
        journal = _Journal.load(manifest.root)
        outside = _outside_folders(manifest, shards)
        if outside and journal is None and body.get("labels") != "fused":
            if not copy_referenced_shards:
                _refuse_referenced(manifest_file, manifest, outside)
            manifest = copy_referenced(manifest_file, manifest, outside, log)
            shards = _shards(manifest)
            body = _read_json_body(manifest_file)
        if journal is not None and journal.body.get("label_map_sha256") != label_map.sha256:
            if journal.body.get("state") == "running" and not journal.shards:
                journal = None  # stopped before touching any shard: start over with this map
            elif journal.body.get("state") == "complete":
                raise RelabelError(f"{journal.path}: labels were already fused in place with another label map "
                                   f"(sha256 {journal.body.get('label_map_sha256')}); they are no longer source "
                                   f"classes, so {label_map.source} does not apply")
            else:
                raise RelabelError(f"{journal.path}: an unfinished relabel with another label map (sha256 "
                                   f"{journal.body.get('label_map_sha256')}, from "
                                   f"{journal.body.get('label_map_source')}) is in progress; rerun with that map to "
                                   "finish it (done shards cannot be reverted)")
        if journal is None and body.get("labels") == "fused":
            if body.get("label_map_sha256") == label_map.sha256:
                return InPlaceResult("already", 0, len(shards), [])
            raise RelabelError(f"{manifest_file}: labels were already fused in place with another label map "
                               f"(sha256 {body.get('label_map_sha256')}); {label_map.source} does not apply")
        if journal is not None and journal.body.get("state") == "complete":
            return InPlaceResult("already", 0, len(shards), [])
        for shard in shards:
            _remove(_temp_of(shard.rec))
        if journal is not None:
            _resolve_pending(journal, shards)
        todo = [s for s in shards if journal is None or journal.state_of(s) != "done"]
        for shard in progress(todo, total=len(todo), desc="check labels", unit="shard"):
            _precheck(shard, label_map)
        if journal is None:  # after the check: a bad record leaves no journal behind
            journal = _Journal.start(manifest.root, label_map)
        outside = _outside_folders(manifest, todo)
        for folder in outside:
            log(f"relabel: note: {folder} lies outside {manifest.root}; its shards are rewritten too")
        for shard in todo:
            tmp = _temp_of(shard.rec)
            try:
                old_sha, new_sha = _write_relabelled(shard, tmp, label_map, kill)
                shutil.copymode(shard.rec, tmp)
                journal.shards[shard.rel] = {"state": "pending", "old_sha256": old_sha, "new_sha256": new_sha}
                journal.save()
                kill("pending")
                os.replace(tmp, shard.rec)
                _fsync_dir(os.path.dirname(shard.rec))
                kill("renamed")
            finally:
                _remove(tmp)
            journal.shards[shard.rel]["state"] = "done"
            journal.save()
            kill("done")
        _finish(manifest_file, manifest, shards, label_map, journal, kill)
    return InPlaceResult("relabelled", len(todo), len(shards), outside)


def journal_state(trainset: str) -> str | None:
    """"running", "complete", or None when the training set has no relabel journal."""
    journal = _Journal.load(os.path.dirname(os.path.abspath(_manifest_file(trainset))))
    return journal.body.get("state") if journal else None


# ---------------------------------------------------------------------------------------------
# A new fused training set


def _copy_shard(shard: _Shard, writer, label_map: LabelMap) -> None:
    """Append the shard's records to `writer` (a DatasetWriter) with their fused labels."""
    lo, hi = shard.label_range
    with RecordReader(shard.rec, shard.idx, require_index=True) as reader, _Bar(shard) as bar:
        for key, payload in reader.items():
            try:
                header, image = unpack(payload)
                class_id = class_id_of(header)
            except ValueError as e:
                raise RecordIOError(shard.rec, f"key {key}", str(e)) from None
            if not lo <= class_id < hi:
                raise RecordIOError(shard.rec, f"key {key}",
                                    f"label {class_id} outside dataset {shard.dataset.name!r}'s classes [{lo}, {hi})")
            writer.add(int(label_map.mapping[class_id]), image)
            bar.update()


def relabel_copy(trainset: str, label_map: LabelMap, out: str, name: str = "fused",
                 num_shards: int | None = None) -> Manifest:
    """Write OUT: one dataset `name` with the fused labels, manifest.json + train.idx, label_map.json."""
    from .shards import DatasetWriter, atomic_directory

    manifest_file = _manifest_file(trainset)
    manifest = load_manifest(manifest_file)
    body = _read_json_body(manifest_file)
    if body.get("labels") == "fused" or journal_state(manifest_file) == "running":
        raise RelabelError(f"{manifest_file}: labels were fused in place (or are being: see {JOURNAL_FILE}); "
                           "--out needs a training set holding source classes")
    out = os.path.abspath(out)
    inside = [p for p in manifest.rec_paths() + [manifest_file]
              if (os.path.realpath(p) + os.sep).startswith(os.path.realpath(out) + os.sep)]
    if inside:
        raise RelabelError(f"{out}: holds the input {inside[0]}; --out replaces the folder as a whole, give a new one")
    shards = _shards(manifest)
    num_shards = len(shards) if num_shards is None else num_shards
    if num_shards < 1:
        raise RelabelError(f"--shards must be >= 1, got {num_shards}")
    folder_name = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "fused"
    with atomic_directory(out, "relabel") as tmp:
        folder = os.path.join(tmp, folder_name)
        os.makedirs(folder)
        writer = DatasetWriter(folder, name, num_shards, class_offset=0)
        try:
            for shard in shards:
                _copy_shard(shard, writer, label_map)
            info = writer.finish(label_map.num_fused)
        except BaseException:
            writer.abort()
            raise
        write_manifest(tmp, [info], [folder])
        with open(os.path.join(tmp, OUT_LABEL_MAP), "w", encoding="utf-8") as f:
            f.write(_map_copy_text(label_map))
        out_manifest = os.path.join(tmp, MANIFEST_FILE)
        out_body = _read_json_body(out_manifest)
        out_body["relabel"] = {"source_manifest": os.path.abspath(manifest_file),
                               "source_datasets": [{"name": d.name, "num_classes": d.num_classes}
                                                   for d in manifest.datasets],
                               "label_map_sha256": label_map.sha256, "label_map_file": OUT_LABEL_MAP}
        with open(out_manifest, "w", encoding="utf-8") as f:
            f.write(json.dumps(out_body, indent=1) + "\n")
    return load_manifest(out)
