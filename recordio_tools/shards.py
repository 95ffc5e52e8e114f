"""Writing a dataset folder of N shards (`DatasetWriter`), the --out checks every dataset command makes
before any work (`check_out`), and the worker initializer that ties workers to the command.

Use the writer inside `files.atomic_directory`: the folder is built under a temporary name beside the
target and renamed into place at the end, so an error or Ctrl-C leaves the previous folder (if any)
exactly as it was.
"""

from __future__ import annotations

import os

import numpy as np

from .files import mark_status
from .manifest import SAMPLE_WEIGHTS_FILE, DatasetInfo, Shard, shard_name, write_dataset_info
from .recordio import RecordWriter, image_header, pack


def exit_with_parent(parent_pid: int) -> None:
    """Worker-process initializer: be killed when the parent dies (Linux PR_SET_PDEATHSIG), so a killed
    command leaves no workers behind. Elsewhere a no-op."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


def _is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_out(out: str, inputs: list[str], command: str, overwrite: bool = False,
              inputs_inside_ok: bool = False) -> str:
    """Refuse, before any work, an --out that would destroy what this command did not write: an input, a
    folder inside an input or holding one, or a non-empty folder that is not an earlier `command` output
    (unless `overwrite`). Returns the absolute --out."""
    from .errors import UsageError

    out = os.path.abspath(out)
    real_out = os.path.realpath(out)
    for given in inputs:
        real_in = os.path.realpath(given)
        if real_in == real_out:
            raise UsageError(f"{out}: is the input {given}; give --out a new folder")
        if _is_inside(real_out, real_in):
            raise UsageError(f"{out}: lies inside the input {given}; give --out a folder outside it")
        if _is_inside(real_in, real_out) and not inputs_inside_ok:
            raise UsageError(f"{out}: holds the input {given} and --out is replaced as a whole; give a new folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"{out}: exists and is not a folder; give --out a new folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite and not inputs_inside_ok:
        owner, what = mark_status(out)
        if owner != command:
            raise UsageError(f"{out}: exists, is not empty and is {what}; give a new --out folder, or pass "
                             f"--overwrite to replace it as a whole")
    refuse_referenced_out(out)
    return out


def refuse_referenced_out(out: str) -> None:
    """Refuse to replace a folder whose shards another training set references (`build` references
    datasets in place): rewriting them would break that set silently; --overwrite does not lift it."""
    from .errors import UsageError
    from .manifest import manifests_referencing

    if not os.path.isdir(out):
        return
    users = manifests_referencing([out], inside_ok=out)
    if users:
        raise UsageError(f"{out}: its shards are used by the training set {', '.join(users)}; replacing them "
                         f"would break it: give --out a new folder (or remove that training set first)")


class DatasetWriter:
    """Appends images of one dataset to `num_shards` shards (round robin) in `folder`.

    Labels are written as exact source-class ids `class_offset + local_label`. Call `finish()`
    to close the shards and write dataset.json; use inside `atomic_directory`.
    """

    def __init__(self, folder: str, name: str, num_shards: int, class_offset: int = 0):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.folder = folder
        self.name = name
        self.class_offset = class_offset
        self._writers = [RecordWriter(os.path.join(folder, shard_name(i) + ".rec")) for i in range(num_shards)]
        self._count = 0
        self._max_label = -1

    def add(self, local_label: int, jpeg: bytes) -> None:
        if local_label < 0:
            raise ValueError(f"{self.name}: negative label {local_label}")
        writer = self._writers[self._count % len(self._writers)]
        record_key = len(writer)
        writer.write(record_key, pack(image_header(self.class_offset + local_label, record_key), jpeg))
        self._count += 1
        self._max_label = max(self._max_label, local_label)

    def finish(self, num_classes: int | None = None, sample_weights: np.ndarray | None = None) -> DatasetInfo:
        """Commit the shards and dataset.json; `num_classes` defaults to max label + 1. `sample_weights`:
        one loss weight per image in the order they were added, written as sample_weights.npy in record
        order (the shards in order, each in its .idx order) and named in dataset.json."""
        num_classes = self._max_label + 1 if num_classes is None else num_classes
        if num_classes <= self._max_label:
            raise ValueError(f"{self.name}: label {self._max_label} but num_classes={num_classes}")
        shards = []
        for i, writer in enumerate(self._writers):
            writer.commit()
            shards.append(Shard(shard_name(i) + ".rec", shard_name(i) + ".idx", len(writer)))
        info = DatasetInfo(self.name, num_classes, self._count, self.class_offset, shards)
        if sample_weights is not None:
            info.sample_weights = self._write_weights(np.asarray(sample_weights, dtype=np.float32))
        write_dataset_info(self.folder, info)
        return info

    def _write_weights(self, weights: np.ndarray) -> str:
        if weights.shape != (self._count,):
            raise ValueError(f"{self.name}: {weights.shape} sample weights for {self._count} images")
        n = len(self._writers)
        record_order = np.concatenate([weights[s::n] for s in range(n)])  # how `add` dealt them
        np.save(os.path.join(self.folder, SAMPLE_WEIGHTS_FILE), record_order, allow_pickle=False)
        return SAMPLE_WEIGHTS_FILE

    def abort(self) -> None:
        for writer in self._writers:
            writer.abort()
