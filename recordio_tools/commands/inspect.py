"""`recordio_tools inspect`: counts, classes, images per class and label range of a .rec, a dataset or a training set.

    recordio_tools inspect data/faces_emore/train.rec      # one .rec (its .idx beside it when present)
    recordio_tools inspect data/casia                       # a dataset folder (dataset.json + shards)
    recordio_tools inspect data/train --json                # a training set (manifest.json), as JSON

Class statistics come from reading every record's header (a few bytes each, through the index);
`--no-scan` prints only what dataset.json / manifest.json and the index say. Layout is
"insightface" for a .rec with a header record and identity records, else "plain".
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ..cli import UsageError
from ..insightface import detect_layout
from ..manifest import DATASET_FILE, MANIFEST_FILE, DatasetInfo, fused_in_place, load_manifest, read_dataset_info
from ..recordio import RecordIOError, RecordReader, class_id_of, read_index, unpack
from ..scan import class_ids_at, class_stats, shard_class_ids


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="counts, classes, images per class, label range, manifest summary",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a .rec file, a dataset folder, or a training-set folder / manifest.json")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-scan", action="store_true", help="do not read record headers: counts from the "
                                                               "JSON files and indexes only")
    parser.set_defaults(run=run)


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


# ---------------------------------------------------------------------------------------------
# Gathering


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


# ---------------------------------------------------------------------------------------------
# Printing


def _per_class(stats: dict) -> str:
    per_class = stats.get("images_per_class")
    if not per_class:
        return "-"
    return f"{per_class['min']} / {per_class['median']:g} / {per_class['max']}"


def _label_range(stats: dict) -> str:
    labels = stats.get("label_range")
    return f"{labels[0]}..{labels[1]}" if labels else "-"


def print_rec(report: dict) -> None:
    print(f"file          {report['path']} ({report['bytes']} bytes), index {report['index'] or 'none'}")
    print(f"layout        {report['layout']}")
    if report.get("image_records") is not None:
        print(f"records       {report['records']} ({report['image_records']} images, "
              f"{report['identity_records']} identity records)")
    if "classes" in report:
        print(f"images        {report['images']}")
        print(f"classes       {report['classes']}")
        print(f"images/class  {_per_class(report)} (min / median / max)")
        print(f"labels        {_label_range(report)}")


def _mismatches(report: dict) -> list[str]:
    scanned = report.get("scanned")
    if not scanned:
        return []
    notes = []
    if scanned["images"] != report["num_images"]:
        notes.append(f"{report['name']}: dataset.json says {report['num_images']} images, shards hold "
                     f"{scanned['images']}")
    low, high = report["declared_label_range"]
    labels = scanned.get("label_range")
    if labels and (labels[0] < low or labels[1] > high):
        notes.append(f"{report['name']}: labels {labels[0]}..{labels[1]} outside the declared {low}..{high}")
    return notes


def print_dataset(report: dict) -> None:
    print(f"dataset       {report['name']} ({report['path']})")
    print(f"shards        {report['shards']}")
    print(f"images        {report['num_images']}")
    print(f"classes       {report['num_classes']} (offset {report['class_offset']}, labels "
          f"{report['declared_label_range'][0]}..{report['declared_label_range'][1]})")
    if "scanned" in report:
        scanned = report["scanned"]
        print(f"images/class  {_per_class(scanned)} (min / median / max; {scanned['classes']} classes with images)")
        print(f"labels found  {_label_range(scanned)}")
    for note in _mismatches(report):
        print(f"warning: {note} (run `recordio_tools verify {report['path']}`)")


def print_manifest(report: dict) -> None:
    print(f"training set  {report['path']}: {report['num_datasets']} datasets, {report['num_classes']} classes, "
          f"{report['num_images']} images, {report['index_entries']} entries in {report['index']}")
    if report.get("labels") == "fused":
        print(f"labels        fused in place: {report['num_classes_fused']} fused classes (ids 0.."
              f"{report['num_classes_fused'] - 1}); per-dataset class counts are of the source classes")
    print(f"{'dataset':<20} {'classes':>9} {'images':>10} {'offset':>9} {'shards':>6}  {'img/class min/med/max':>22}"
          f"  labels found")
    for d in report["datasets"]:
        scanned = d.get("scanned", {})
        print(f"{d['name']:<20} {d['num_classes']:>9} {d['num_images']:>10} {d['class_offset']:>9} {d['shards']:>6}"
              f"  {_per_class(scanned):>22}  {_label_range(scanned)}")
    for note in [n for d in report["datasets"] for n in _mismatches(d)]:
        print(f"warning: {note} (run `recordio_tools verify {report['path']}`)")


def run(args) -> int:
    kind, path = classify_path(args.path)
    scan = not args.no_scan
    try:
        report = {"rec": inspect_rec, "dataset": inspect_dataset, "manifest": inspect_manifest}[kind](path, scan)
    except RecordIOError as e:
        raise RecordIOError(e.path, e.where, f"{e.message} (run `recordio_tools verify {args.path}` to list every "
                                             "problem)") from None
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        {"rec": print_rec, "dataset": print_dataset, "manifest": print_manifest}[kind](report)
    return 0
