"""Checking every record of a .rec, a dataset folder or a training set, listing every problem
(the library behind `recordio_tools verify`; the command in commands/verify.py prints the report).

    report = verify_path("rec", "data/faces_emore/train.rec", decode=True)   # kind as classify_path gives it
    for line in report.problems: print(line)

Per shard: the .idx parses; every index entry's offset lies inside the .rec and starts a record
(magic word, continuation flags, lengths, nothing truncated); each payload has an IRHeader whose
label is a class id inside the dataset's range ([class_offset, class_offset + num_classes) for a
dataset, [0, identities) for an insightface .rec, any class id for a plain .rec) and an image
that decodes (`decode=False` skips that, the slow part); a sequential scan of the .rec finds the
same records as the index (resyncing after a bad record at the next record header). Per dataset /
training set: image counts agree with the JSON files, class offsets are the running sum, every
shard file exists, and train.idx equals the index of all shards concatenated. Each problem is one
line `FILE: key K: problem` (or `byte B`, `line L`).
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field

import numpy as np

from .images import decode_problem
from .manifest import DATASET_FILE, ManifestError, fused_in_place, parse_manifest, read_dataset_info, startup_check
from .recordio import INDEX_LIMIT, FramingError, RecordIOError, class_id_of, next_record_start, read_record_at, record_end, unpack
from .scan import progress

_MAX_INDEX_MISMATCHES = 20  # train.idx lines listed one by one before a count


@dataclass
class Report:
    """Problems found so far (one line each) and what was checked."""

    problems: list[str] = field(default_factory=list)
    shards: int = 0
    records: int = 0

    def add(self, path: str, where: str, message: str) -> None:
        self.problems.append(f"{path}: {where}: {message}" if where else f"{path}: {message}")


@dataclass
class ShardSpec:
    """One .rec/.idx pair and the class ids its image records may hold ([low, high); None = any)."""

    rec: str
    idx: str
    label_range: tuple[int, int] | None
    range_owner: str = ""  # e.g. "dataset 'casia'", for messages


# ---------------------------------------------------------------------------------------------
# Index and sequential scan


@dataclass
class IndexEntries:
    """The well-formed lines of a .idx, in file order, as int64 arrays (compact for millions of lines)."""

    keys: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def _drop_duplicate_keys(idx: str, keys: np.ndarray, line_numbers: np.ndarray, report: Report) -> np.ndarray:
    """Mask of the entries to keep: the first line of each key; later lines with it are reported."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeated = np.zeros(len(keys), dtype=bool)  # in sorted order
    repeated[1:] = sorted_keys[1:] == sorted_keys[:-1]
    if repeated.any():
        unique_keys, first_positions = np.unique(sorted_keys, return_index=True)
        for i in np.sort(order[repeated]):
            first = order[first_positions[np.searchsorted(unique_keys, keys[i])]]
            report.add(idx, f"key {keys[i]}", f"duplicate key (lines {line_numbers[first]} and {line_numbers[i]})")
    keep = np.ones(len(keys), dtype=bool)
    keep[order[repeated]] = False
    return keep


def read_index_entries(idx: str, report: Report) -> IndexEntries | None:
    """Every well-formed (key, offset) line; malformed lines and duplicate keys are reported and left out."""
    try:
        with open(idx, "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        report.add(idx, "", "index file not found (every .rec needs its .idx beside it)")
        return None
    keys, offsets, line_numbers = array("q"), array("q"), array("q")
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split(b"\t")
        try:
            if len(fields) != 2:
                raise ValueError
            key, offset = int(fields[0]), int(fields[1])
            if not (-INDEX_LIMIT <= key < INDEX_LIMIT and -INDEX_LIMIT <= offset < INDEX_LIMIT):
                raise ValueError
        except ValueError:
            report.add(idx, f"line {line_no}", f"expected 'key<TAB>offset', got {line[:60]!r}")
            continue
        keys.append(key)
        offsets.append(offset)
        line_numbers.append(line_no)
    keys, offsets = np.frombuffer(keys, dtype=np.int64), np.frombuffer(offsets, dtype=np.int64)
    keep = _drop_duplicate_keys(idx, keys, np.frombuffer(line_numbers, dtype=np.int64), report)
    return IndexEntries(keys[keep], offsets[keep])


def scan_record_starts(rec: str, size: int) -> tuple[np.ndarray, dict[int, str]]:
    """Offsets where a sequential scan finds records (sorted), and the scan's errors by offset (it resyncs)."""
    starts, errors = array("q"), {}
    with open(rec, "rb") as f:
        pos = 0
        while pos < size:
            try:
                end = record_end(f, pos, size)
            except FramingError as e:
                errors[pos] = str(e)
                pos = next_record_start(f, pos, size)
                continue
            starts.append(pos)
            pos = end
    return np.frombuffer(starts, dtype=np.int64), errors


# ---------------------------------------------------------------------------------------------
# Records


def _insightface_ranges(rec: str, entries: IndexEntries) -> tuple[int, int] | None:
    """(first identity key, end key) when key 0 is an insightface header record, else None."""
    at_zero = np.flatnonzero(entries.keys == 0)
    if not len(at_zero):
        return None
    offset = int(entries.offsets[at_zero[0]])
    try:
        with open(rec, "rb") as f:
            header, body = unpack(read_record_at(f, offset, rec, "key 0")[0])
    except ValueError:
        return None
    if header.flag != 2 or body:
        return None
    first, end = (int(v) for v in header.label)
    return first, end


def _check_label(report: Report, rec: str, where: str, header, spec: ShardSpec) -> None:
    try:
        class_id = class_id_of(header)
    except ValueError as e:
        report.add(rec, where, str(e))
        return
    if spec.label_range is not None and not spec.label_range[0] <= class_id < spec.label_range[1]:
        low, high = spec.label_range
        report.add(rec, where, f"label {class_id} outside [{low}, {high}) of {spec.range_owner}")


def _check_identity(report: Report, rec: str, where: str, header, first_identity: int) -> None:
    if header.flag != 2:
        report.add(rec, where, f"identity record must have flag=2, got flag={header.flag}")
        return
    start, stop = (int(v) for v in header.label)
    if not 1 <= start <= stop <= first_identity:
        report.add(rec, where, f"identity range [{start}, {stop}) outside the image keys [1, {first_identity})")


def check_payload(report: Report, spec: ShardSpec, where: str, payload: bytes, kind: str, decode: bool,
                  first_identity: int = 0) -> None:
    """Check one record's IRHeader, label and image; `kind` is "image", "identity" or "header"."""
    try:
        header, image = unpack(payload)
    except ValueError as e:
        report.add(spec.rec, where, f"bad IRHeader: {e}")
        return
    if kind == "identity":
        _check_identity(report, spec.rec, where, header, first_identity)
    if kind != "image":
        return
    _check_label(report, spec.rec, where, header, spec)
    problem = decode_problem(image) if decode else (None if image else "empty payload, not an image")
    if problem:
        report.add(spec.rec, where, f"payload of {len(image)} bytes: {problem}")


def _record_kinds(spec: ShardSpec, entries: IndexEntries) -> tuple[dict[int, str], int]:
    """Kind of each key ("image" by default) and the first identity key, for an insightface layout."""
    ranges = _insightface_ranges(spec.rec, entries) if spec.label_range is None else None
    if ranges is None:
        return {}, 0
    first, end = ranges
    kinds = {0: "header", **{key: "identity" for key in range(first, end)}}
    spec.label_range = (0, max(end - first, 0))
    spec.range_owner = f"the {end - first} identities in the header record"
    return kinds, first


def _report_shared_offsets(report: Report, spec: ShardSpec, entries: IndexEntries, valid: np.ndarray) -> None:
    offsets, counts = np.unique(entries.offsets[valid], return_counts=True)
    for offset in offsets[counts > 1]:
        keys = entries.keys[entries.offsets == offset]
        report.add(spec.idx, f"key {keys[1]}", f"offset {offset} is also key {keys[0]}'s ({len(keys)} keys "
                                               f"share it: the record would be read {len(keys)} times)")


def _check_indexed_records(report: Report, spec: ShardSpec, entries: IndexEntries, size: int,
                           starts: np.ndarray, decode: bool) -> None:
    """Read and check every record the index names; then the entries pointing inside records."""
    kinds, first_identity = _record_kinds(spec, entries)
    readable = np.zeros(len(entries), dtype=bool)
    with open(spec.rec, "rb") as f:
        for i in progress(range(len(entries)), total=len(entries), desc=os.path.basename(spec.rec), unit="rec"):
            key, offset = int(entries.keys[i]), int(entries.offsets[i])
            where = f"key {key}"
            if not 0 <= offset < size:
                report.add(spec.idx, where, f"offset {offset} past the end of {spec.rec} ({size} bytes)")
                continue
            try:
                payload = read_record_at(f, offset, spec.rec, where)[0]
            except RecordIOError as e:
                report.add(spec.rec, where, e.message)
                continue
            readable[i] = True
            check_payload(report, spec, where, payload, kinds.get(key, "image"), decode, first_identity)
    report.records += len(entries)
    inside = readable & ~np.isin(entries.offsets, starts)
    for key, offset in zip(entries.keys[inside], entries.offsets[inside]):
        report.add(spec.idx, f"key {key}", f"offset {offset} is inside another record, not at a record start")
    _report_shared_offsets(report, spec, entries, (entries.offsets >= 0) & (entries.offsets < size))


def _check_scanned_records(report: Report, spec: ShardSpec, starts: np.ndarray, decode: bool) -> None:
    """Without an index: check every record a sequential scan finds."""
    with open(spec.rec, "rb") as f:
        for offset in progress(starts.tolist(), total=len(starts), desc=os.path.basename(spec.rec), unit="rec"):
            payload = read_record_at(f, offset, spec.rec, f"byte {offset}")[0]
            check_payload(report, spec, f"record at byte {offset}", payload, "image", decode)
    report.records += len(starts)


def verify_shard(report: Report, spec: ShardSpec, decode: bool) -> int | None:
    """Check one shard; returns its number of index entries (None without a readable index)."""
    report.shards += 1
    entries = read_index_entries(spec.idx, report)
    if not os.path.exists(spec.rec):
        report.add(spec.rec, "", "record file not found")
        return None if entries is None else len(entries)
    size = os.path.getsize(spec.rec)
    starts, scan_errors = scan_record_starts(spec.rec, size)
    if entries is None:
        _check_scanned_records(report, spec, starts, decode)
    else:
        _check_indexed_records(report, spec, entries, size, starts, decode)
        for offset in np.setdiff1d(starts, entries.offsets):
            report.add(spec.rec, f"byte {offset}", "record not in the index")
        indexed = set(np.intersect1d(entries.offsets, np.fromiter(scan_errors, np.int64, len(scan_errors))).tolist())
        scan_errors = {pos: e for pos, e in scan_errors.items() if pos not in indexed}  # already reported by key
    for pos, error in sorted(scan_errors.items()):
        report.add(spec.rec, f"byte {pos}", f"sequential scan: {error}; skipped to the next record header")
    return None if entries is None else len(entries)


# ---------------------------------------------------------------------------------------------
# Datasets and training sets


def verify_dataset(report: Report, folder: str, decode: bool) -> None:
    try:
        info = read_dataset_info(folder)
        fused = fused_in_place(os.path.join(folder, DATASET_FILE))
    except ManifestError as e:
        report.problems.append(str(e))
        return
    verify_dataset_shards(report, info, folder, os.path.join(folder, DATASET_FILE), decode, fused)


def verify_dataset_shards(report: Report, info, root: str, source: str, decode: bool,
                          fused_classes: int | None = None) -> list[int | None]:
    """Check a dataset's shards against its label range (the fused classes once relabelled in place) and
    image counts; index entries per shard."""
    label_range = (info.class_offset, info.class_offset + info.num_classes)
    owner = f"dataset {info.name!r}"
    if fused_classes:
        label_range, owner = (0, fused_classes), f"the {fused_classes} fused classes (relabelled in place)"
    counts = []
    for shard in info.shards:
        spec = ShardSpec(os.path.normpath(os.path.join(root, shard.rec)),
                         os.path.normpath(os.path.join(root, shard.idx)), label_range, owner)
        count = verify_shard(report, spec, decode)
        if count is not None and count != shard.num_images:
            report.add(source, f"shard {shard.rec}", f"says {shard.num_images} images, the index has {count}")
        counts.append(count)
    return counts


def _expected_combined_offsets(manifest) -> np.ndarray | None:
    """Offset of entry i of train.idx: the shards' own indexes, shifted by the sizes of the .rec before."""
    parts, base = [], 0
    for rec, idx in zip(manifest.rec_paths(), manifest.shard_idx_paths()):
        shard = read_index_entries(idx, Report())  # its problems are reported with the shard
        if shard is None or not os.path.exists(rec):
            return None
        parts.append(shard.offsets + base)
        base += os.path.getsize(rec)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def verify_combined_index(report: Report, manifest) -> None:
    """train.idx must equal the shards' indexes concatenated (keys 0..N-1, offsets shifted)."""
    path = os.path.normpath(manifest.index_path())
    actual = read_index_entries(path, report)
    expected = _expected_combined_offsets(manifest)
    if actual is None or expected is None:
        return
    if len(actual) != len(expected):
        report.add(path, "", f"{len(actual)} entries, the shards hold {len(expected)} records; rerun "
                             "recordio_tools build")
    n = min(len(actual), len(expected))
    wrong = np.flatnonzero((actual.keys[:n] != np.arange(n)) | (actual.offsets[:n] != expected[:n]))
    for i in wrong[:_MAX_INDEX_MISMATCHES]:
        report.add(path, f"key {actual.keys[i]}", f"offset {actual.offsets[i]}; entry {i} should be key {i} at "
                                                  f"offset {expected[i]} (the shards concatenated)")
    if len(wrong) > _MAX_INDEX_MISMATCHES:
        report.add(path, "", f"{len(wrong) - _MAX_INDEX_MISMATCHES} more entries differ; rerun recordio_tools build")


def verify_manifest(report: Report, path: str, decode: bool) -> None:
    try:
        manifest = parse_manifest(path)
    except ManifestError as e:
        report.problems.append(str(e))
        return
    try:
        fused = fused_in_place(path if path.endswith(".json") else os.path.join(path, "manifest.json"))
    except ManifestError as e:
        report.problems.append(str(e))
        return
    expected_offset = 0
    for info in manifest.datasets:
        if info.class_offset != expected_offset:
            report.add(path, f"dataset {info.name!r}", f"class_offset {info.class_offset}, expected "
                                                       f"{expected_offset} (the running sum of class counts)")
        expected_offset += info.num_classes
        verify_dataset_shards(report, info, manifest.root, path, decode, fused)
    verify_combined_index(report, manifest)
    try:
        startup_check(path)  # what `fftrain train` checks at start, the same function
    except (ManifestError, RecordIOError) as e:
        if not report.problems:  # else the cause is already reported, in verify's own words
            report.problems.append(str(e))


def verify_path(kind: str, path: str, decode: bool) -> Report:
    """Check what `path` names: `kind` "rec" (a .rec with its .idx), "dataset" (a folder) or "manifest"."""
    report = Report()
    if kind == "rec":
        verify_shard(report, ShardSpec(path, os.path.splitext(path)[0] + ".idx", None), decode)
    elif kind == "dataset":
        verify_dataset(report, path, decode)
    else:
        verify_manifest(report, path, decode)
    return report
