"""Writing a dataset folder of N shards, all or nothing.

The folder is built under a temporary name beside the target and renamed into place at the
end, so an error or Ctrl-C leaves the previous folder (if any) exactly as it was.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Iterator

from .manifest import DatasetInfo, Shard, shard_name, write_dataset_info
from .recordio import RecordWriter, image_header, pack


@contextmanager
def atomic_directory(target: str) -> Iterator[str]:
    """Yield a temporary folder; on success it replaces `target`, on any exception it is removed."""
    target = os.path.abspath(target)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = os.path.join(parent, f".{name}.old-{os.getpid()}")
    if os.path.exists(target):
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


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

    def finish(self, num_classes: int | None = None) -> DatasetInfo:
        """Commit the shards and dataset.json; `num_classes` defaults to max label + 1."""
        num_classes = self._max_label + 1 if num_classes is None else num_classes
        if num_classes <= self._max_label:
            raise ValueError(f"{self.name}: label {self._max_label} but num_classes={num_classes}")
        shards = []
        for i, writer in enumerate(self._writers):
            writer.commit()
            shards.append(Shard(shard_name(i) + ".rec", shard_name(i) + ".idx", len(writer)))
        info = DatasetInfo(self.name, num_classes, self._count, self.class_offset, shards)
        write_dataset_info(self.folder, info)
        return info

    def abort(self) -> None:
        for writer in self._writers:
            writer.abort()
