"""What a .rec, a dataset folder or a training set holds: counts, classes, images per class, label range
(the library behind `recordio_tools inspect`, which prints these reports), and `classify_path`, which
both `inspect` and `verify` use to tell what a path names.

    kind, path = classify_path("data/train")          # ("manifest", "data/train/manifest.json")
    report = inspect_path(kind, path, scan=True)       # a JSON-able dict

Class statistics come from reading every record's header (a few bytes each, through the index);
`scan=False` reports only what dataset.json / manifest.json and the index say. Layout is
"insightface" for a .rec with a header record and identity records, else "plain".
"""

from __future__ import annotations

import os

import numpy as np

from .errors import UsageError
from .insightface import detect_layout
from .manifest import DATASET_FILE, MANIFEST_FILE, DatasetInfo, fused_in_place, load_manifest, read_dataset_info
from .recordio import RecordIOError, RecordReader, class_id_of, read_index, unpack
from .scan import class_ids_at, class_stats, shard_class_ids


def classify_path(path: str) -> tuple[str, str]:
    """("rec", rec file) | ("dataset", folder) | ("manifest", manifest.json) for what `path` names."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: not found")
    if os.path.isdir(path):
        for name, kind in ((MANIFEST_FILE, "manifest"), (DATASET_FILE, "dataset"), ("train.rec", "rec")):
            if os.path.exists(os.path.join(path, name)):
                return kind, (path if kind == "dataset" else os.path.join(path, name))
        raise UsageError(f"{path}: no {MANIFEST_FILE}, {DATASET_FILE} or train.rec in this folder")
    if path.endswith(".json"):
        return ("dataset", os.path.dirname(path) or ".") if os.path.basename(path) == DATASET_FILE \
            else ("manifest", path)
    if path.endswith(".idx"):
        path = path[:-4] + ".rec"
        if not os.path.exists(path):
            raise RecordIOError(path, "open", "record file not found")
    if path.endswith(".rec"):
        return "rec", path
    raise UsageError(f"{path}: expected a .rec file, a dataset folder or a training set (manifest.json)")


def _scan_without_index(reader: RecordReader) -> tuple[int, np.ndarray]:
    """(records, class ids of image records) by a sequential scan; header/identity records skipped."""
    records, ids = 0, []
    for offset, payload in reader.scan():
        records += 1
        try:
            header, body = unpack(payload)
            if not (header.flag == 2 and not body):
                ids.append(class_id_of(header))
        except ValueError as e:
            raise RecordIOError(reader.rec_path, f"record at byte {offset}", str(e)) from None
    return records, np.array(ids, dtype=np.int64)


def inspect_rec(rec: str, scan: bool) -> dict:
    with RecordReader(rec) as reader:
        report = {"kind": "rec", "path": rec, "bytes": reader.size, "index": reader.idx_path}
        if reader.idx_path is None:
            records, ids = _scan_without_index(reader) if scan else (None, np.zeros(0, np.int64))
            return {**report, "layout": "unknown (no .idx)", "records": records, **class_stats(ids)}
        try:
            layout = detect_layout(reader)
        except RecordIOError:
            raise
        except ValueError as e:
            raise RecordIOError(rec, "header/identity records", str(e)) from None
        report.update(layout=layout.kind, records=len(reader.keys), image_records=len(layout.image_keys),
                      identity_records=len(layout.identity_ranges))
        if not scan:
            return report
        offsets = [reader.index[key] for key in layout.image_keys]
        return {**report, **class_stats(class_ids_at(rec, offsets, layout.image_keys, desc="labels"))}


def _dataset_report(info: DatasetInfo, root: str, scan: bool, fused_classes: int | None = None) -> dict:
    report = {"name": info.name, "num_classes": info.num_classes, "num_images": info.num_images,
              "class_offset": info.class_offset, "shards": len(info.shards),
              "declared_label_range": [info.class_offset, info.class_offset + info.num_classes - 1]}
    if fused_classes:  # relabelled in place: the records hold fused ids
        report.update(labels="fused", num_classes_fused=fused_classes, declared_label_range=[0, fused_classes - 1])
    if not scan:
        return report
    ids = [shard_class_ids(os.path.join(root, s.rec), os.path.join(root, s.idx), desc=info.name)
           for s in info.shards]
    return {**report, "scanned": class_stats(np.concatenate(ids) if ids else np.zeros(0, np.int64))}


def inspect_dataset(folder: str, scan: bool) -> dict:
    fused = fused_in_place(os.path.join(folder, DATASET_FILE))
    return {"kind": "dataset", "path": folder, **_dataset_report(read_dataset_info(folder), folder, scan, fused)}


def inspect_manifest(path: str, scan: bool) -> dict:
    manifest = load_manifest(path)
    fused = fused_in_place(os.path.join(manifest.root, MANIFEST_FILE))
    datasets = [_dataset_report(info, manifest.root, scan, fused) for info in manifest.datasets]
    return {"kind": "manifest", "path": path, "num_datasets": len(datasets), "num_classes": manifest.num_classes,
            **({"labels": "fused", "num_classes_fused": fused} if fused else {}),
            "num_images": manifest.num_images, "index": manifest.index_path(),
            "index_entries": len(read_index(manifest.index_path())), "datasets": datasets}


def inspect_path(kind: str, path: str, scan: bool) -> dict:
    """The report of what `path` names (`kind` from `classify_path`)."""
    return {"rec": inspect_rec, "dataset": inspect_dataset, "manifest": inspect_manifest}[kind](path, scan)
