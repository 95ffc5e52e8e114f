"""`recordio_tools convert`: an image folder tree, one sub-folder per identity, to a dataset folder.

    recordio_tools convert data/raw/casia --out data/casia --shards 8 --workers 8
    recordio_tools convert data/raw/celeba --out data/celeba --landmarks celeba_5pt.txt --skip-bad
    recordio_tools convert data/raw/unlabeled --out data/unlabeled --unlabeled   # no identities: for pseudo-label

Identity folders sorted by name get local labels 0..n-1 (stored as class_offset + local label);
every image file below an identity folder (recursively, sorted by path) is one sample. Each image
becomes a 112x112 RGB JPEG: aligned to the ArcFace template when `--landmarks` has its 5 points,
otherwise kept as is when it already is a 112x112 RGB JPEG, else centre-cropped to a square and
resized. Images are decoded and encoded in `--workers` processes; the output order does not
depend on the number of workers. The output folder holds shard-NNNNN.rec/.idx, dataset.json and
classes.json (local label -> folder name, images per class). It is built under a temporary name
and renamed at the end: an error or Ctrl-C leaves the previous folder as it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import closing

import numpy as np

from ..errors import UsageError
from ..files import atomic_directory, write_text_atomic
from ..image_folders import (UNALIGNED_FILE, ImageTask, check_missing_landmarks, encode_in_order,
                             list_identities, load_landmarks, make_tasks, unlabeled_images)
from ..images import FACE_SIZE
from ..manifest import SKIPPED_FILE, write_classes
from ..scan import progress
from ..shards import DatasetWriter, check_out
from .options import add_class_offset, add_dataset_out, add_overwrite


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="image folder tree (one folder per identity) -> dataset folder",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IMAGE_ROOT",
                        help="root folder holding one sub-folder of images per identity")
    add_dataset_out(parser)
    parser.add_argument("--shards", type=int, default=1, metavar="N",
                        help="number of .rec/.idx shards, images dealt round robin (default: 1)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                        help="processes decoding and encoding images; 1 = no pool (default: min(8, CPUs))")
    parser.add_argument("--quality", type=int, default=95, metavar="Q",
                        help="JPEG quality of re-encoded images, 1-100 (default: 95)")
    parser.add_argument("--landmarks", metavar="FILE",
                        help="text or JSON file of 5 landmarks per image (pixels): 'relative/path.jpg x1 y1 ... x5 y5' "
                             f"per line; those images are aligned to the {FACE_SIZE}x{FACE_SIZE} ArcFace template, "
                             "the others centre-cropped and resized (see recordio_tools/align.py)")
    add_class_offset(parser)
    parser.add_argument("--skip-bad", action="store_true",
                        help=f"leave out images that do not decode or whose landmarks lie outside them (listed on "
                             f"stderr and in {SKIPPED_FILE}) instead of failing; identities left with no image are "
                             "dropped (named on stderr) and the class ids stay contiguous")
    parser.add_argument("--allow-missing-landmarks", action="store_true",
                        help=f"with --landmarks: centre-crop the images that have no landmarks line (listed in "
                             f"{UNALIGNED_FILE}) instead of failing")
    add_overwrite(parser)
    parser.add_argument("--unlabeled", action="store_true",
                        help="IMAGE_ROOT is a folder of faces without identities (any layout, searched "
                             "recursively): every image gets label 0 of one class, for `fftrain pseudo-label`")
    parser.set_defaults(run=run)


# ---------------------------------------------------------------------------------------------
# The command


def _check_args(args) -> None:
    if args.shards < 1:
        raise UsageError(f"--shards must be >= 1, got {args.shards}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {args.quality}")
    if args.class_offset < 0:
        raise UsageError(f"--class-offset must be >= 0, got {args.class_offset}")


def _write_classes(folder: str, root: str, identities: list[tuple[str, list[str]]], counts: np.ndarray) -> None:
    write_classes(folder, root, {"names": [name for name, _ in identities], "images": counts.tolist()}, indent=1)


def _bad_image(root: str, task: ImageTask, error: str, skip_bad: bool, skipped: list[str]) -> None:
    path = os.path.join(root, task.relpath)
    if not skip_bad:
        raise UsageError(f"{path}: {error}; fix or remove it, or pass --skip-bad to leave such files out")
    print(f"convert: skipped {path}: {error}", file=sys.stderr)
    skipped.append(f"{task.relpath}\t{error}")


def _warn_dropped(names: list[str]) -> None:
    if names:
        shown = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
        print(f"convert: warning: dropped {len(names)} identit{'y' if len(names) == 1 else 'ies'} whose images were "
              f"all left out: {shown}; class ids stay contiguous", file=sys.stderr)


def run(args) -> int:
    _check_args(args)
    root = args.input
    check_out(args.out, [root] + ([args.landmarks] if args.landmarks else []), "convert", args.overwrite)
    identities = unlabeled_images(root) if args.unlabeled else list_identities(root)
    tasks = make_tasks(identities, load_landmarks(args.landmarks))
    unaligned = check_missing_landmarks(tasks, args.landmarks, args.allow_missing_landmarks)
    name = args.name or os.path.basename(os.path.abspath(args.out))
    counts = np.zeros(len(identities), dtype=np.int64)
    skipped: list[str] = []
    new_ids: dict[int, int] = {}
    started = time.perf_counter()
    with atomic_directory(args.out, "convert") as tmp:
        writer = DatasetWriter(tmp, name, args.shards, args.class_offset)
        with closing(encode_in_order(root, tasks, args.quality, args.workers)) as results:  # stops the pool
            for task, jpeg, error in progress(results, total=len(tasks), desc="convert"):
                if jpeg is None:
                    _bad_image(root, task, error, args.skip_bad, skipped)
                    continue
                # tasks come in identity order: ids given at an identity's first image stay contiguous
                writer.add(new_ids.setdefault(task.label, len(new_ids)), jpeg)
                counts[task.label] += 1
        if not counts.sum():
            raise UsageError(f"{root}: none of the {len(tasks)} images could be read")
        kept = [identity for identity, count in zip(identities, counts) if count]
        _warn_dropped([name for (name, _), count in zip(identities, counts) if not count])
        info = writer.finish(num_classes=len(kept))
        _write_classes(tmp, root, kept, counts[counts > 0])
        if skipped:
            write_text_atomic(os.path.join(tmp, SKIPPED_FILE), "\n".join(skipped) + "\n")
        if unaligned:
            write_text_atomic(os.path.join(tmp, UNALIGNED_FILE), "\n".join(unaligned) + "\n")
            print(f"convert: note: {len(unaligned)} image(s) without landmarks centre-cropped (listed in "
                  f"{UNALIGNED_FILE})", file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(f"convert: wrote {args.out}: {info.num_images} images, {info.num_classes} classes "
          f"(labels {info.class_offset}..{info.class_offset + info.num_classes - 1}), {args.shards} shard(s), "
          f"{len(skipped)} skipped, {elapsed:.1f} s ({info.num_images / max(elapsed, 1e-9):.0f} img/s)")
    return 0
