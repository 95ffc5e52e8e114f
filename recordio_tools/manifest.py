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
from .recordio import EXACT_LIMIT as MAX_CLASS_ID, RecordIOError, format_index, read_index
from .strict_json import json_int, read_json

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
    body = read_json(path, ManifestError, what)
    if not isinstance(body, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(body).__name__}")
    return body


def _text(d: dict, key: str, source: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{source}: field {key!r} must be a non-empty string, got {value!r}"[:300])
    return value


def _shard_from_dict(s, source: str) -> Shard:
    if not isinstance(s, dict):
        raise ManifestError(f"{source}: a shard entry must be an object, got {s!r}"[:300])
    return Shard(_text(s, "rec", source), _text(s, "idx", source), json_int(s, "num_images", source, ManifestError))


def _dataset_from_dict(d, source: str) -> DatasetInfo:
    """One dataset entry, every field of the right type, class ids within what the shards can store."""
    if not isinstance(d, dict):
        raise ManifestError(f"{source}: a dataset entry must be an object, got {d!r}"[:300])
    if not isinstance(d.get("shards"), list):
        raise ManifestError(f"{source}: field 'shards' must be a list")
    shards = [_shard_from_dict(s, source) for s in d["shards"]]
    weights = d.get("sample_weights")
    if weights is not None and not isinstance(weights, str):
        raise ManifestError(f"{source}: field 'sample_weights' must be a file name, got {weights!r}"[:300])
    num_images = json_int(d, "num_images", source, ManifestError)
    offset = json_int(d, "class_offset", source, ManifestError, upper=MAX_CLASS_ID, default=0)
    info = DatasetInfo(_text(d, "name", source),
                       json_int(d, "num_classes", source, ManifestError, upper=MAX_CLASS_ID - offset),
                       num_images, offset, shards, weights)
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
    if not os.path.isfile(json_path):
        return None
    body = read_json(json_path, ManifestError)
    if not isinstance(body, dict) or body.get("labels") != "fused":
        return None
    count = body.get("num_classes_fused")
    source_classes = body.get("num_classes")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1 or (
            isinstance(source_classes, int) and count > source_classes):
        raise ManifestError(f"{json_path}: labels fused in place but no valid num_classes_fused ({count!r}, "
                            f"between 1 and the source classes)"[:300])
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
    if not isinstance(body.get("datasets", []), list):
        raise ManifestError(f"{path}: field 'datasets' must be a list")
    datasets = [_dataset_from_dict(d, path) for d in body.get("datasets", [])]
    if not datasets:
        raise ManifestError(f"{path}: no datasets")
    index = body.get("index", COMBINED_INDEX)
    if not isinstance(index, str) or not index:
        raise ManifestError(f"{path}: field 'index' must be a file name, got {index!r}"[:300])
    return Manifest(root, datasets, index)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def manifests_referencing(folders: Sequence[str], extra_bases: Sequence[str] = (), inside_ok: str | None = None,
                          exclude: Sequence[str] = ()) -> list[str]:
    """The manifest.json files found beside `folders` (in each one's parent, and one level down from it, and
    the same around `extra_bases`) whose shards lie in one of `folders`; those inside `inside_ok` and those in
    `exclude` are left out. A manifest that cannot be read is not a user (it cannot train)."""
    import glob

    wanted = [os.path.realpath(f) for f in folders]
    bases = {os.path.dirname(f) for f in wanted} | {os.path.realpath(b) for b in extra_bases}
    found = {os.path.realpath(p) for base in bases
             for p in [os.path.join(base, MANIFEST_FILE), *glob.glob(os.path.join(glob.escape(base), "*", MANIFEST_FILE))]
             if os.path.isfile(p)}
    found -= {os.path.realpath(p) for p in exclude}
    users = []
    for path in sorted(found):
        if inside_ok and _inside(path, os.path.realpath(inside_ok)):
            continue
        try:
            other = parse_manifest(path)
        except ManifestError:
            continue
        if any(_inside(os.path.realpath(os.path.dirname(rec)), w) for rec in other.rec_paths() for w in wanted):
            users.append(path)
    return users


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
    check_counts(manifest, path)
    return manifest


MIN_INDEX_LINE = 4  # "K\tO\n": the shortest line of an .idx file


def check_counts(manifest: Manifest, source: str) -> None:
    """Image counts no larger than the shard indexes can hold (so class counts, bounded by the images, are
    too): what a manifest makes a reader allocate stays proportional to the files on disk."""
    for rec, idx, shard in zip(manifest.rec_paths(), manifest.shard_idx_paths(),
                               [s for d in manifest.datasets for s in d.shards]):
        capacity = os.path.getsize(idx) // MIN_INDEX_LINE if os.path.isfile(idx) else 0
        if shard.num_images > capacity:
            raise ManifestError(f"{source}: shard {shard.rec} claims {shard.num_images} images but its index {idx} "
                                f"holds at most {capacity}")


def startup_check(path: str) -> tuple[Manifest, np.ndarray | None]:
    """What the trainer checks of a training set before it allocates anything from it, and what `verify`
    runs too (one check, not two): the manifest against the files on disk, the counts against the shard
    indexes, the per-sample weights, the fused-in-place class count. Returns the manifest and weights."""
    manifest = load_manifest(path)
    if manifest.num_classes > max(manifest.num_images, 1):
        raise ManifestError(f"{manifest_file(path)}: {manifest.num_classes} classes but {manifest.num_images} images; "
                            "a class without an image cannot be learnt (and would cost memory for nothing)")
    weights = load_sample_weights(manifest)
    training_view(manifest)
    return manifest, weights


def manifest_file(path: str) -> str:
    """The manifest.json a path names (the file, or the folder holding it)."""
    return os.path.join(path, MANIFEST_FILE) if os.path.isdir(path) else path


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
        weights = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: a header cannot order memory
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
    return np.array(weights, dtype=np.float32)


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
