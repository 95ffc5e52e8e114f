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

from ..inspection import classify_path, inspect_path
from ..recordio import RecordIOError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="counts, classes, images per class, label range, manifest summary",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a .rec file, a dataset folder, or a training-set folder / manifest.json")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-scan", action="store_true", help="do not read record headers: counts from the "
                                                               "JSON files and indexes only")
    parser.set_defaults(run=run)


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
        report = inspect_path(kind, path, scan)
    except RecordIOError as e:
        raise RecordIOError(e.path, e.where, f"{e.message} (run `recordio_tools verify {args.path}` to list every "
                                             "problem)") from None
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        {"rec": print_rec, "dataset": print_dataset, "manifest": print_manifest}[kind](report)
    return 0
