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
import json
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Generator, Iterator

import numpy as np

from ..cli import UsageError
from ..images import FACE_SIZE, IMAGE_EXTENSIONS, ImageError, LandmarksError, prepare_face
from ..files import write_text_atomic
from ..scan import progress
from ..shards import DatasetWriter, atomic_directory, check_out, exit_with_parent

CLASSES_FILE = "classes.json"
SKIPPED_FILE = "skipped.txt"
UNALIGNED_FILE = "unaligned.txt"
_BATCH = 32  # images per task sent to a worker process


@dataclass(frozen=True)
class ImageTask:
    label: int
    relpath: str  # relative to the tree root, '/'-separated
    landmarks: np.ndarray | None
    landmarks_where: str | None = None  # 'FILE: line N' of the landmarks


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="image folder tree (one folder per identity) -> dataset folder",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IMAGE_ROOT",
                        help="root folder holding one sub-folder of images per identity")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="dataset folder to write (replaced as a whole at the end)")
    parser.add_argument("--name", help="dataset name stored in dataset.json (default: the --out folder's name)")
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
    parser.add_argument("--class-offset", type=int, default=0, metavar="C",
                        help="first class id: stored labels are offset + local label (default: 0)")
    parser.add_argument("--skip-bad", action="store_true",
                        help=f"leave out images that do not decode or whose landmarks lie outside them (listed on "
                             f"stderr and in {SKIPPED_FILE}) instead of failing; identities left with no image are "
                             "dropped (named on stderr) and the class ids stay contiguous")
    parser.add_argument("--allow-missing-landmarks", action="store_true",
                        help=f"with --landmarks: centre-crop the images that have no landmarks line (listed in "
                             f"{UNALIGNED_FILE}) instead of failing")
    parser.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder even if it is not an earlier output of this command")
    parser.add_argument("--unlabeled", action="store_true",
                        help="IMAGE_ROOT is a folder of faces without identities (any layout, searched "
                             "recursively): every image gets label 0 of one class, for `fftrain pseudo-label`")
    parser.set_defaults(run=run)


# ---------------------------------------------------------------------------------------------
# Finding the images


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_below(folder: str, root: str) -> list[str]:
    """Relative ('/'-separated) paths of the image files below `folder`, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        found.extend(f"{rel_dir}/{name}" for name in filenames if _is_image_file(name))
    return sorted(found)


def list_identities(root: str) -> list[tuple[str, list[str]]]:
    """(folder name, relative image paths) per identity folder holding images, sorted by name."""
    if not os.path.isdir(root):
        raise UsageError(f"{root}: not a folder (expected one sub-folder of images per identity)")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    identities = [(name, _images_below(os.path.join(root, name), root)) for name in names]
    empty = [name for name, images in identities if not images]
    if empty:
        print(f"convert: note: {len(empty)} folder(s) without images left out, e.g. {empty[0]!r}")
    loose = [e.name for e in os.scandir(root) if e.is_file() and _is_image_file(e.name)]
    if loose:
        print(f"convert: note: {len(loose)} image(s) directly in {root} ignored (images go in one sub-folder "
              f"per identity), e.g. {loose[0]!r}")
    identities = [(name, images) for name, images in identities if images]
    if not identities:
        raise UsageError(f"{root}: no identity folders with images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return identities


def unlabeled_images(root: str) -> list[tuple[str, list[str]]]:
    """Every image below `root` (sorted by path) as the one 'identity' of an unlabeled collection."""
    if not os.path.isdir(root):
        raise UsageError(f"{root}: not a folder of images")
    images = _images_below(root, root)
    if not images:
        raise UsageError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [("unlabeled", images)]


def _load_landmarks(path: str | None) -> dict[str, tuple[np.ndarray, str]]:
    if path is None:
        return {}
    from ..align import read_landmarks_located

    try:
        return read_landmarks_located(path)
    except ValueError as e:
        raise UsageError(str(e)) from None


def make_tasks(identities: list[tuple[str, list[str]]],
               landmarks: dict[str, tuple[np.ndarray, str]]) -> list[ImageTask]:
    tasks = [ImageTask(label, relpath, *landmarks.get(relpath, (None, None)))
             for label, (_, images) in enumerate(identities) for relpath in images]
    if landmarks:
        matched = sum(task.landmarks is not None for task in tasks)
        print(f"convert: {matched} of {len(tasks)} images have landmarks and are aligned; "
              f"{len(landmarks) - matched} landmark entries match no image")
    return tasks


def _check_missing_landmarks(tasks: list[ImageTask], landmarks_file: str | None, allow: bool) -> list[str]:
    """The images without a landmarks line; an error naming them unless `allow`."""
    if landmarks_file is None:
        return []
    missing = [task.relpath for task in tasks if task.landmarks is None]
    if missing and not allow:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
        raise UsageError(f"{landmarks_file}: no landmarks line for {len(missing)} of {len(tasks)} images: {shown}; "
                         f"add them, or pass --allow-missing-landmarks to centre-crop those (listed in "
                         f"{UNALIGNED_FILE})")
    return missing


# ---------------------------------------------------------------------------------------------
# Encoding, in order, optionally in worker processes


def _encode_batch(root: str, quality: int, batch: list[ImageTask]) -> list[tuple[bytes | None, str | None]]:
    """(jpeg, None) or (None, reason) per task; runs in a worker process."""
    results = []
    for task in batch:
        try:
            results.append((prepare_face(os.path.join(root, task.relpath), task.landmarks, quality), None))
        except LandmarksError as e:
            results.append((None, f"{e} ({task.landmarks_where})"))
        except (ImageError, OSError, ValueError) as e:
            results.append((None, f"unreadable image: {e}"))
    return results


def _init_worker(parent_pid: int) -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and removes the partial output, and die
    with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent_pid)


def _batches(tasks: list[ImageTask], size: int) -> Iterator[list[ImageTask]]:
    for start in range(0, len(tasks), size):
        yield tasks[start:start + size]


def encode_in_order(root: str, tasks: list[ImageTask], quality: int,
                    workers: int) -> Generator[tuple[ImageTask, bytes | None, str | None], None, None]:
    """(task, jpeg, error) for every task in `tasks` order; at most 4 batches per worker in flight."""
    if workers <= 1:
        for batch in _batches(tasks, _BATCH):
            yield from ((task, *result) for task, result in zip(batch, _encode_batch(root, quality, batch)))
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        pending: deque = deque()
        try:
            for batch in _batches(tasks, _BATCH):
                pending.append((batch, pool.submit(_encode_batch, root, quality, batch)))
                if len(pending) >= 4 * workers:
                    done_batch, future = pending.popleft()
                    yield from ((task, *result) for task, result in zip(done_batch, future.result()))
            while pending:
                done_batch, future = pending.popleft()
                yield from ((task, *result) for task, result in zip(done_batch, future.result()))
        finally:
            for _, future in pending:
                future.cancel()


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
    body = {"format": "fftrain-classes", "source": os.path.abspath(root),
            "names": [name for name, _ in identities], "images": counts.tolist()}
    write_text_atomic(os.path.join(folder, CLASSES_FILE), json.dumps(body, indent=1) + "\n")


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
    tasks = make_tasks(identities, _load_landmarks(args.landmarks))
    unaligned = _check_missing_landmarks(tasks, args.landmarks, args.allow_missing_landmarks)
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
