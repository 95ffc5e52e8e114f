"""`recordio_tools import`: an insightface-style (or plain) train.rec/.idx to a dataset folder for DALI.

    recordio_tools import data/faces_emore/train.rec --out data/ms1m --shards 16 --class-offset 0
    recordio_tools import data/faces_emore --out data/ms1m        # a folder holding train.rec/.idx

insightface's header record (key 0) and identity records are dropped; only image records are
kept. The class of each image is its record's label (a float label, flag 0, or an exact two-float
label, flag 2), which is what insightface's training reads. Classes are renumbered to local
labels 0..n-1 in order of their original id (unchanged when they already are 0..n-1) and stored
as class_offset + local label; classes.json maps each local label back to its original id.
Records are shuffled (`--seed`) and dealt round robin to `--shards` shards; the image bytes are
copied unchanged. Only the first bytes of each payload are checked (a known image signature);
`recordio_tools verify` decodes every image. The output folder is built under a temporary name
and renamed at the end: an error or Ctrl-C leaves the previous folder as it was.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ..errors import UsageError
from ..insightface import Layout, copy_shuffled, local_labels, read_layout, resolve_rec
from ..manifest import write_classes
from ..recordio import RecordIOError, RecordReader
from ..files import atomic_directory
from ..shards import DatasetWriter, check_out
from .options import add_class_offset, add_dataset_out, add_overwrite

def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("import", help="insightface-style train.rec/.idx -> dataset folder of shards",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="REC_OR_FOLDER",
                        help="a .rec file with its .idx beside it, or a folder holding train.rec/.idx")
    add_dataset_out(parser)
    parser.add_argument("--shards", type=int, default=1, metavar="N", help="number of .rec/.idx shards (default: 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the record shuffle (default: 0)")
    add_class_offset(parser)
    add_overwrite(parser)
    parser.set_defaults(run=run)


def _hint(error: RecordIOError, rec: str) -> RecordIOError:
    return RecordIOError(error.path, error.where, f"{error.message} (run `recordio_tools verify {rec}` to list "
                                                  "every problem)")


def _write_classes(folder: str, rec: str, layout: Layout, originals: np.ndarray) -> None:
    write_classes(folder, rec, {"layout": layout.kind, "source_labels": originals.tolist()})


def _check_args(args) -> None:
    if args.shards < 1:
        raise UsageError(f"--shards must be >= 1, got {args.shards}")
    if args.class_offset < 0:
        raise UsageError(f"--class-offset must be >= 0, got {args.class_offset}")


def run(args) -> int:
    _check_args(args)
    rec = resolve_rec(args.input)
    check_out(args.out, [args.input, rec, os.path.splitext(rec)[0] + ".idx"], "import", args.overwrite)
    name = args.name or os.path.basename(os.path.abspath(args.out))
    started = time.perf_counter()
    try:
        with RecordReader(rec, require_index=True) as reader:
            layout, class_ids = read_layout(reader)
            if not layout.image_keys:
                raise UsageError(f"{rec}: no image records")
            originals, labels = local_labels(class_ids)
            with atomic_directory(args.out, "import") as tmp:
                writer = DatasetWriter(tmp, name, args.shards, args.class_offset)
                copy_shuffled(reader, layout.image_keys, labels, writer, args.seed)
                info = writer.finish(num_classes=len(originals))
                _write_classes(tmp, rec, layout, originals)
    except RecordIOError as e:
        raise _hint(e, rec) from None
    elapsed = time.perf_counter() - started
    remapped = "" if np.array_equal(originals, np.arange(len(originals))) else ", labels renumbered"
    print(f"import: wrote {args.out}: {info.num_images} images, {info.num_classes} classes (labels "
          f"{info.class_offset}..{info.class_offset + info.num_classes - 1}{remapped}), {args.shards} shard(s); "
          f"{layout.kind} layout, {len(reader.keys) - len(layout.image_keys)} non-image records dropped; "
          f"{elapsed:.1f} s ({info.num_images / max(elapsed, 1e-9):.0f} img/s)")
    return 0
