"""Dataset folders and the training-set manifest: the one source of truth for class offsets.

A *dataset folder* (written by `convert`, `import`, `synth`, `split-overlap`) holds shards
`shard-NNNNN.rec/.idx` and `dataset.json`::

    {"format": "fftrain-dataset", "version": 1, "name": "casia", "num_classes": 10575,
     "num_images": 494414, "class_offset": 0, "shards": [{"rec": "shard-00000.rec", "idx": ...,
     "num_images": ...}]}

Labels stored in its shards are `class_offset + local label`, as exact class ids (see
`recordio.class_label`).

A *training set* (written by `build`) is a `manifest.json` plus one combined `train.idx` over
all shards of all datasets concatenated in manifest order, because DALI's mxnet reader takes
many .rec files but exactly one index. Paths in both JSON files are relative to the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from .errors import UserError
from .files import write_text_atomic
from .recordio import RecordIOError, format_index, read_index

DATASET_FILE = "dataset.json"
SAMPLE_WEIGHTS_FILE = "sample_weights.npy"
MANIFEST_FILE = "manifest.json"
COMBINED_INDEX = "train.idx"
CLASSES_FILE = "classes.json"  # beside dataset.json: where each local label came from (convert, import)
SKIPPED_FILE = "skipped.txt"  # beside dataset.json: the images `convert --skip-bad` left out


class ManifestError(UserError, ValueError):
    """A dataset.json or manifest.json that is missing, malformed, or disagrees with the shards."""


@dataclass
class Shard:
    rec: str
    idx: str
    num_images: int


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    num_images: int
    class_offset: int = 0
    shards: list[Shard] = field(default_factory=list)
    sample_weights: str | None = None
    """optional: a float32 .npy of one loss weight per image, in record order (the shards in order, each
    in its .idx order), e.g. written by `fftrain pseudo-label`; absent means weight 1 for every image"""


def _info_body(info: DatasetInfo) -> dict:
    body = asdict(info)
    if body["sample_weights"] is None:
        del body["sample_weights"]
    return body


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None


def _dataset_from_dict(d: dict, source: str) -> DatasetInfo:
    try:
        shards = [Shard(s["rec"], s["idx"], int(s["num_images"])) for s in d["shards"]]
        info = DatasetInfo(d["name"], int(d["num_classes"]), int(d["num_images"]), int(d.get("class_offset", 0)),
                           shards, d.get("sample_weights"))
    except (KeyError, TypeError) as e:
        raise ManifestError(f"{source}: missing or malformed field {e}") from None
    if sum(s.num_images for s in shards) != info.num_images:
        raise ManifestError(f"{source}: dataset {info.name!r} says {info.num_images} images but its shards "
                            f"hold {sum(s.num_images for s in shards)}")
    return info


def write_dataset_info(folder: str, info: DatasetInfo) -> None:
    body = {"format": "fftrain-dataset", "version": 1, **_info_body(info)}
    write_text_atomic(os.path.join(folder, DATASET_FILE), json.dumps(body, indent=1) + "\n")


def write_classes(folder: str, source: str, fields: dict, indent: int | None = None) -> None:
    """classes.json of a dataset folder: the format, the absolute `source` path, then `fields`."""
    body = {"format": "fftrain-classes", "source": os.path.abspath(source), **fields}
    write_text_atomic(os.path.join(folder, CLASSES_FILE), json.dumps(body, indent=indent) + "\n")


def read_dataset_info(folder: str) -> DatasetInfo:
    path = os.path.join(folder, DATASET_FILE)
    return _dataset_from_dict(_read_json(path, "dataset description (written by recordio_tools convert/import/synth)"),
                              path)


@dataclass
class Manifest:
    """A training set: datasets in order, their shards (paths relative to `root`), the combined index."""

    root: str
    datasets: list[DatasetInfo]
    index: str = COMBINED_INDEX

    @property
    def num_classes(self) -> int:
        return sum(d.num_classes for d in self.datasets)

    @property
    def num_images(self) -> int:
        return sum(d.num_images for d in self.datasets)

    @property
    def dataset_names(self) -> list[str]:
        return [d.name for d in self.datasets]

    def class_offsets(self) -> np.ndarray:
        return np.array([d.class_offset for d in self.datasets], dtype=np.int64)

    def class_dataset(self) -> np.ndarray:
        """Dataset index of every source class, shape [num_classes]."""
        return np.repeat(np.arange(len(self.datasets), dtype=np.int64),
                         [d.num_classes for d in self.datasets])

    def rec_paths(self) -> list[str]:
        return [os.path.join(self.root, s.rec) for d in self.datasets for s in d.shards]

    def shard_idx_paths(self) -> list[str]:
        return [os.path.join(self.root, s.idx) for d in self.datasets for s in d.shards]

    def index_path(self) -> str:
        return os.path.join(self.root, self.index)

    def dataset_of_shard(self) -> list[int]:
        return [i for i, d in enumerate(self.datasets) for _ in d.shards]


def fused_in_place(json_path: str) -> int | None:
    """num_classes_fused when the manifest.json / dataset.json at `json_path` says its labels were fused in
    place by `recordio_tools relabel --in-place` (records then hold fused ids in [0, that)), else None."""
    try:
        with open(json_path, encoding="utf-8") as f:
            body = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("labels") != "fused":
        return None
    count = body.get("num_classes_fused")
    if not isinstance(count, int) or count < 1:
        raise ManifestError(f"{json_path}: labels fused in place but no valid num_classes_fused ({count!r})")
    return count


def training_view(manifest: Manifest) -> Manifest:
    """The label space a trainer reads: a set fused in place is one dataset ("fused") of its fused classes
    over all its shards (the records hold fused ids, so the per-dataset source ranges no longer apply);
    any other set as it is."""
    fused = fused_in_place(os.path.join(manifest.root, MANIFEST_FILE))
    if not fused:
        return manifest
    shards = [s for d in manifest.datasets for s in d.shards]
    return Manifest(manifest.root, [DatasetInfo("fused", fused, manifest.num_images, 0, shards)], manifest.index)


def parse_manifest(path: str) -> Manifest:
    """Read a manifest.json (or the folder holding one) without checking offsets or files on disk."""
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_FILE)
    body = _read_json(path, "training-set manifest (written by recordio_tools build)")
    if body.get("format") != "fftrain-manifest":
        raise ManifestError(f"{path}: not an fftrain manifest (format={body.get('format')!r})")
    root = os.path.dirname(os.path.abspath(path))
    datasets = [_dataset_from_dict(d, path) for d in body.get("datasets", [])]
    if not datasets:
        raise ManifestError(f"{path}: no datasets")
    return Manifest(root, datasets, body.get("index", COMBINED_INDEX))


def load_manifest(path: str) -> Manifest:
    """Read a manifest.json (or the folder holding one) and check it against the shards on disk."""
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_FILE)
    manifest = parse_manifest(path)
    _check_offsets(manifest, path)
    for rec, idx in zip(manifest.rec_paths(), manifest.shard_idx_paths()):
        for shard_file in (rec, idx):
            if not os.path.exists(shard_file):
                raise ManifestError(f"{path}: shard file {shard_file} is missing")
    if not os.path.exists(manifest.index_path()):
        raise ManifestError(f"{path}: combined index {manifest.index_path()} is missing; rerun recordio_tools build")
    return manifest


def _check_offsets(manifest: Manifest, source: str) -> None:
    expected = 0
    for d in manifest.datasets:
        if d.class_offset != expected:
            raise ManifestError(f"{source}: dataset {d.name!r} has class_offset {d.class_offset}, expected {expected} "
                                "(offsets must be the running sum of class counts in manifest order)")
        expected += d.num_classes


def combined_index(rec_paths: Sequence[str], idx_paths: Sequence[str]) -> list[tuple[int, int]]:
    """One index over the .rec files concatenated in order: keys renumbered 0..N-1, offsets shifted."""
    entries: list[tuple[int, int]] = []
    base = 0
    for rec, idx in zip(rec_paths, idx_paths):
        size = os.path.getsize(rec)
        shard_entries = read_index(idx)
        for key, offset in shard_entries:
            if offset >= size:
                raise RecordIOError(idx, f"key {key}", f"offset {offset} past the end of {rec} ({size} bytes)")
            entries.append((len(entries), base + offset))
        base += size
    return entries


def write_manifest(out_dir: str, datasets: Sequence[DatasetInfo], dataset_dirs: Sequence[str]) -> Manifest:
    """Write manifest.json and the combined train.idx in `out_dir` for datasets already holding
    source-class labels (their class_offset set). Shard paths are made relative to `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    relative = []
    for info, folder in zip(datasets, dataset_dirs):
        shards = [Shard(os.path.relpath(os.path.join(folder, s.rec), out_dir),
                        os.path.relpath(os.path.join(folder, s.idx), out_dir), s.num_images) for s in info.shards]
        weights = info.sample_weights and os.path.relpath(os.path.join(folder, info.sample_weights), out_dir)
        relative.append(DatasetInfo(info.name, info.num_classes, info.num_images, info.class_offset, shards, weights))
    manifest = Manifest(os.path.abspath(out_dir), relative)
    _check_offsets(manifest, os.path.join(out_dir, MANIFEST_FILE))
    entries = combined_index(manifest.rec_paths(), manifest.shard_idx_paths())
    write_text_atomic(manifest.index_path(), format_index(entries))
    body = {"format": "fftrain-manifest", "version": 1, "num_classes": manifest.num_classes,
            "num_images": manifest.num_images, "index": manifest.index,
            "datasets": [_info_body(d) for d in relative]}
    write_text_atomic(os.path.join(out_dir, MANIFEST_FILE), json.dumps(body, indent=1) + "\n")
    return manifest


# ---- per-sample loss weights ------------------------------------------------------------------

def _load_weights_file(path: str, num_images: int, name: str) -> np.ndarray:
    try:
        weights = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ManifestError(f"{path}: sample-weight file of dataset {name!r} not found") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: not a .npy array of sample weights ({e})") from None
    if weights.shape != (num_images,) or not np.issubdtype(weights.dtype, np.floating):
        raise ManifestError(f"{path}: expected {num_images} float weights (one per image of {name!r}), "
                        f"got {weights.dtype} {weights.shape}")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise ManifestError(f"{path}: weight {weights[bad[0]]} of image {bad[0]} is not a finite number >= 0")
    return weights.astype(np.float32)


def load_sample_weights(manifest: Manifest) -> np.ndarray | None:
    """A dataset's `sample_weights` file (named in its dataset.json, carried into manifest.json by
    `build`): a float32 .npy with one weight per image in record order (the shards in order, each in
    its .idx order, which is the order of the dataset's keys in the combined index). Returns
    [num_images] float32 over the combined index (datasets without a file weigh 1), or None when no
    dataset has weights. Loaded with allow_pickle=False."""
    if not any(d.sample_weights for d in manifest.datasets):
        return None
    parts = [np.ones(d.num_images, np.float32) if not d.sample_weights else
             _load_weights_file(os.path.join(manifest.root, d.sample_weights), d.num_images, d.name)
             for d in manifest.datasets]
    return np.concatenate(parts)
