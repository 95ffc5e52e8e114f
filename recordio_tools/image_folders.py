"""An image folder tree -> the face JPEGs of a dataset, in a fixed order: the library behind
`recordio_tools convert` (commands/convert.py parses the arguments, writes the folder and prints).

    identities = list_identities("data/raw/casia")            # (folder name, image paths) per identity
    tasks = make_tasks(identities, load_landmarks(None))
    for task, jpeg, error in encode_in_order("data/raw/casia", tasks, quality=95, workers=8): ...

Identity folders sorted by name get local labels 0..n-1; every image file below an identity folder
(recursively, sorted by path) is one sample. Images are decoded and encoded in worker processes;
the order of the results does not depend on their number.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Generator, Iterator

import numpy as np

from .errors import UsageError
from .images import IMAGE_EXTENSIONS, ImageError, LandmarksError, prepare_face
from .shards import exit_with_parent

UNALIGNED_FILE = "unaligned.txt"
_BATCH = 32  # images per task sent to a worker process


@dataclass(frozen=True)
class ImageTask:
    label: int
    relpath: str  # relative to the tree root, '/'-separated
    landmarks: np.ndarray | None
    landmarks_where: str | None = None  # 'FILE: line N' of the landmarks


# ---------------------------------------------------------------------------------------------
# Finding the images


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def images_below(folder: str, root: str) -> list[str]:
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
    identities = [(name, images_below(os.path.join(root, name), root)) for name in names]
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
    images = images_below(root, root)
    if not images:
        raise UsageError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [("unlabeled", images)]


def load_landmarks(path: str | None) -> dict[str, tuple[np.ndarray, str]]:
    if path is None:
        return {}
    from .align import read_landmarks_located

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


def check_missing_landmarks(tasks: list[ImageTask], landmarks_file: str | None, allow: bool) -> list[str]:
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
