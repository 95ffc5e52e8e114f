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
import json
import os
import time

import numpy as np

from ..cli import UsageError
from ..images import looks_like_image
from ..insightface import Layout, detect_layout
from ..files import write_text_atomic
from ..recordio import RecordIOError, RecordReader, unpack
from ..scan import class_ids_at, progress
from ..shards import DatasetWriter, atomic_directory, check_out

CLASSES_FILE = "classes.json"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("import", help="insightface-style train.rec/.idx -> dataset folder of shards",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="REC_OR_FOLDER",
                        help="a .rec file with its .idx beside it, or a folder holding train.rec/.idx")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="dataset folder to write (replaced as a whole at the end)")
    parser.add_argument("--name", help="dataset name stored in dataset.json (default: the --out folder's name)")
    parser.add_argument("--shards", type=int, default=1, metavar="N", help="number of .rec/.idx shards (default: 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the record shuffle (default: 0)")
    parser.add_argument("--class-offset", type=int, default=0, metavar="C",
                        help="first class id: stored labels are offset + local label (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder even if it is not an earlier output of this command")
    parser.set_defaults(run=run)


def resolve_rec(path: str) -> str:
    """The .rec named by `path`: the file itself, or train.rec inside a folder."""
    if os.path.isdir(path):
        path = os.path.join(path, "train.rec")
    if not os.path.exists(path):
        raise RecordIOError(path, "open", "record file not found")
    return path


def _hint(error: RecordIOError, rec: str) -> RecordIOError:
    return RecordIOError(error.path, error.where, f"{error.message} (run `recordio_tools verify {rec}` to list "
                                                  "every problem)")


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


def _write_classes(folder: str, rec: str, layout: Layout, originals: np.ndarray) -> None:
    body = {"format": "fftrain-classes", "source": os.path.abspath(rec), "layout": layout.kind,
            "source_labels": originals.tolist()}
    write_text_atomic(os.path.join(folder, CLASSES_FILE), json.dumps(body) + "\n")


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
