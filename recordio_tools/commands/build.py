"""`recordio_tools build`: several dataset folders -> one training set (manifest.json + train.idx).

    recordio_tools build --out data/train data/asian data/casia data/celeba data/glint data/ms1m data/vgg2
    recordio_tools build --out data/train 'data/synth/*/'        # a glob, expanded here when the shell did not

Datasets get class offsets in the order given: the running sum of their class counts. A dataset
whose dataset.json already has that offset is referenced in place (paths relative to the
manifest); any other is copied to OUT/<name>/ with only the labels rewritten (image bytes, keys and
shard layout unchanged). manifest.json names the datasets, their shard files, class and image
counts and offsets; train.idx is one index over all shards concatenated in manifest order, the
single index DALI's reader takes. The training set is built under a temporary name and renamed at
the end; when dataset folders lie inside OUT, OUT is updated in place file by file instead (each
file and each copied dataset written under a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from ..files import atomic_directory
from ..manifest import DATASET_FILE, MANIFEST_FILE, Manifest, load_manifest
from ..recordio import RecordIOError
from ..shards import check_out
from ..trainset import assemble, check_label_ranges, check_names, expand_datasets, is_inside, load_dataset
from .options import add_overwrite


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("build", help="dataset folders -> training set (manifest.json + train.idx)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="TRAINSET",
                        help="training-set folder to write (manifest.json, train.idx, relabelled copies)")
    parser.add_argument("datasets", nargs="+", metavar="DATASET_DIR",
                        help="dataset folders (each with dataset.json), in class-offset order; globs accepted")
    add_overwrite(parser)
    parser.set_defaults(run=run)


def _print_summary(out: str, manifest: Manifest) -> None:
    print(f"build: wrote {os.path.join(out, MANIFEST_FILE)}: {len(manifest.datasets)} datasets, "
          f"{manifest.num_classes} classes, {manifest.num_images} images, {len(manifest.rec_paths())} shards")
    for info in manifest.datasets:
        print(f"  {info.name:<20} classes {info.num_classes:>9}  images {info.num_images:>10}  "
              f"labels {info.class_offset}..{info.class_offset + info.num_classes - 1}")


def run(args) -> int:
    folders = expand_datasets(args.datasets)
    infos = [load_dataset(folder) for folder in folders]
    check_names(infos, folders)
    out = os.path.abspath(args.out)
    if os.path.exists(os.path.join(out, DATASET_FILE)):
        raise UsageError(f"{out}: is a dataset folder ({DATASET_FILE}); give build a separate --out folder")
    # datasets inside --out are the in-place layout: the manifest is written beside them, nothing replaced
    check_out(out, folders, "build", args.overwrite, inputs_inside_ok=any(is_inside(f, out) for f in folders))
    check_label_ranges(folders, infos)
    try:
        if any(is_inside(folder, out) for folder in folders):
            manifest = assemble(out, folders, infos, copy_atomically=True, final_dir=out)
        else:
            with atomic_directory(out, "build") as tmp:
                assemble(tmp, folders, infos, copy_atomically=False, final_dir=out)
            manifest = load_manifest(out)
    except RecordIOError as e:
        raise RecordIOError(e.path, e.where, f"{e.message} (run `recordio_tools verify` on that dataset to list "
                                             "every problem)") from None
    _print_summary(out, manifest)
    return 0
