"""Several dataset folders -> one training set (manifest.json + train.idx): the library behind
`recordio_tools build` (commands/build.py parses the arguments and prints the summary).

    folders = expand_datasets(["data/synth/*/"])
    infos = [load_dataset(f) for f in folders]
    check_label_ranges(folders, infos)
    with atomic_directory("data/train", "build") as tmp:
        assemble(tmp, folders, infos, copy_atomically=False, final_dir="data/train")

Datasets get class offsets in the order given: the running sum of their class counts. A dataset
whose dataset.json already has that offset is referenced in place; any other is copied with only
the labels rewritten (`copy_with_offset`: image bytes, keys and shard layout unchanged).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from typing import Callable

import numpy as np

from .errors import UsageError
from .files import atomic_directory
from .manifest import (CLASSES_FILE, DATASET_FILE, SAMPLE_WEIGHTS_FILE, SKIPPED_FILE, DatasetInfo, Manifest,
                       ManifestError, Shard, read_dataset_info, shard_name, write_dataset_info, write_manifest)
from .recordio import RecordIOError, RecordReader, RecordWriter, class_id_of, image_header, pack, read_index, unpack
from .scan import class_ids_at, progress

METADATA_FILES = (CLASSES_FILE, SKIPPED_FILE)  # copied along with a relabelled dataset


def expand_datasets(patterns: list[str]) -> list[str]:
    """Dataset folders named by `patterns` (globs expanded, sorted), each once, absolute."""
    folders = []
    for pattern in patterns:
        matches = [pattern] if os.path.exists(pattern) or not glob.has_magic(pattern) else sorted(glob.glob(pattern))
        if not matches:
            raise UsageError(f"{pattern}: no dataset folder matches")
        folders.extend(os.path.abspath(m) for m in matches)
    seen = set()
    for folder in folders:
        real = os.path.realpath(folder)
        if real in seen:
            raise UsageError(f"{folder}: dataset folder given twice")
        seen.add(real)
    return folders


def load_dataset(folder: str) -> DatasetInfo:
    """dataset.json of `folder`, with every shard file it names present."""
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: not a dataset folder (expected a folder with {DATASET_FILE})")
    info = read_dataset_info(folder)
    for shard in info.shards:
        for path in (os.path.join(folder, shard.rec), os.path.join(folder, shard.idx)):
            if not os.path.exists(path):
                raise ManifestError(f"{os.path.join(folder, DATASET_FILE)}: shard file {path} is missing "
                                    f"(run `recordio_tools verify {folder}`)")
    return info


def check_label_ranges(folders: list[str], infos: list[DatasetInfo]) -> None:
    """Every record's label inside its dataset's declared classes (a header scan), so an under-counted
    dataset.json never gives overlapping label ranges."""
    for folder, info in zip(folders, infos):
        low, high = info.class_offset, info.class_offset + info.num_classes
        for shard in info.shards:
            rec, idx = os.path.join(folder, shard.rec), os.path.join(folder, shard.idx)
            entries = read_index(idx)
            ids = class_ids_at(rec, [offset for _, offset in entries], [key for key, _ in entries],
                               desc=f"check {info.name}")
            outside = np.flatnonzero((ids < low) | (ids >= high))
            if outside.size:
                first = int(outside[0])
                raise RecordIOError(rec, f"key {entries[first][0]}",
                                    f"label {int(ids[first])} outside dataset {info.name!r}'s classes [{low}, {high}) "
                                    f"declared in {os.path.join(folder, DATASET_FILE)} ({outside.size} such records); "
                                    "fix its num_classes / class_offset or convert / import it again")


def copy_folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "dataset"


def check_names(infos: list[DatasetInfo], folders: list[str]) -> None:
    first_folder: dict[str, str] = {}
    for info, folder in zip(infos, folders):
        key = copy_folder_name(info.name)
        if key in first_folder:
            raise UsageError(f"dataset name {info.name!r} used by both {first_folder[key]} and {folder}; "
                             "names must be unique (rename one with convert/import --name)")
        first_folder[key] = folder


def running_offsets(infos: list[DatasetInfo]) -> list[int]:
    offsets, total = [], 0
    for info in infos:
        offsets.append(total)
        total += info.num_classes
    return offsets


# ---------------------------------------------------------------------------------------------
# Relabelled copies


def _relabel_shard(src_rec: str, src_idx: str, dst_rec: str, info: DatasetInfo, new_offset: int) -> int:
    """Copy one shard with labels moved from info.class_offset to new_offset; returns the record count."""
    low, high = info.class_offset, info.class_offset + info.num_classes
    with RecordReader(src_rec, src_idx, require_index=True) as reader, RecordWriter(dst_rec) as writer:
        for key in progress(reader.keys, total=len(reader.keys), desc=f"relabel {info.name}"):
            try:
                header, image = unpack(reader.read(key))
                class_id = class_id_of(header)
            except ValueError as e:
                if isinstance(e, RecordIOError):
                    raise
                raise RecordIOError(src_rec, f"key {key}", str(e)) from None
            if not low <= class_id < high:
                raise RecordIOError(src_rec, f"key {key}", f"label {class_id} outside the dataset's classes "
                                                           f"[{low}, {high}) in its dataset.json")
            writer.write(key, pack(image_header(new_offset + class_id - low, header.id), image))
        return len(writer)


def copy_with_offset(src_folder: str, info: DatasetInfo, dst_folder: str, new_offset: int) -> DatasetInfo:
    """Write `info`'s shards to `dst_folder` (which exists) with class offset `new_offset`."""
    shards = []
    for i, shard in enumerate(info.shards):
        name = shard_name(i)
        count = _relabel_shard(os.path.join(src_folder, shard.rec), os.path.join(src_folder, shard.idx),
                               os.path.join(dst_folder, name + ".rec"), info, new_offset)
        shards.append(Shard(name + ".rec", name + ".idx", count))
    # same records in the same order: per-sample weights still apply
    weights = SAMPLE_WEIGHTS_FILE if info.sample_weights else None
    if weights:
        shutil.copyfile(os.path.join(src_folder, info.sample_weights), os.path.join(dst_folder, weights))
    copied = DatasetInfo(info.name, info.num_classes, sum(s.num_images for s in shards), new_offset, shards, weights)
    write_dataset_info(dst_folder, copied)
    for metadata in METADATA_FILES:
        if os.path.exists(os.path.join(src_folder, metadata)):
            shutil.copyfile(os.path.join(src_folder, metadata), os.path.join(dst_folder, metadata))
    return copied


def is_inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def assemble(out_dir: str, folders: list[str], infos: list[DatasetInfo], copy_atomically: bool,
             final_dir: str, log: Callable[[str], None] = print) -> Manifest:
    """Place every dataset at its offset (in place or copied under `out_dir`, which becomes `final_dir`)
    and write the manifest; `log` gets one line per copied dataset."""
    placed, placed_folders = [], []
    for folder, info, offset in zip(folders, infos, running_offsets(infos)):
        if info.class_offset == offset:
            placed.append(info)
            placed_folders.append(folder)
            continue
        target = os.path.join(out_dir, copy_folder_name(info.name))
        log(f"build: {info.name}: stored class offset {info.class_offset}, needs {offset}: writing a "
              f"relabelled copy to {os.path.join(final_dir, copy_folder_name(info.name))}")
        if copy_atomically:
            with atomic_directory(target) as tmp:
                copied = copy_with_offset(folder, info, tmp, offset)
        else:
            os.makedirs(target)
            copied = copy_with_offset(folder, info, target, offset)
        placed.append(copied)
        placed_folders.append(target)
    return write_manifest(out_dir, placed, placed_folders)
