"""What a reader is asked for (`ReadSpec`) and what it reads from (`Prepared`, checked once).

Both readers take the same two objects and a device, plus their own worker settings (DALI
threads; DataLoader processes), so a setting means the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recordio_tools.manifest import Manifest, startup_check, training_view

from fftrain.config import ConfigError
from fftrain.data.label_space import LabelSpace
from fftrain.data.records import RecordSet
from fftrain.data.sharding import steps_per_epoch
from fftrain.data.weights import load_sample_weights


@dataclass(frozen=True)
class ReadSpec:
    """Which batches this rank reads and how they are augmented."""

    shard_id: int
    num_shards: int
    batch_size: int
    seed: int
    epoch: int = 0
    start_step: int = 0
    order: str = "global"  # 'global' (a permutation per (seed, epoch)) or 'reader' (DALI's shard split)
    flip: bool = True
    strong_augment: bool = False
    shuffle: bool = True
    prefetch: int = 2
    image_size: int = 112
    channels_last: bool = False


@dataclass
class Prepared:
    """What every backend needs, checked once before the first step."""

    manifest: Manifest
    records: RecordSet
    labels: LabelSpace
    steps: int
    sample_weights: np.ndarray | None = None  # [N] per combined-index key (weights.py); None: all 1


def prepare(manifest: str | Manifest | Prepared, *, num_shards: int, batch_size: int, device: torch.device,
            label_map=None, validate: bool = True, seed: int = 0, on_bad_record: str = "stop") -> Prepared:
    """Load and check the manifest and its shards (errors name the file), build the label space.
    A `Prepared` passes through (its checks are done; its label space is shared). `on_bad_record`:
    what reading a bad record mid-run does, 'stop' or 'skip' (`records.RecordSet.read_batch`)."""
    if isinstance(manifest, Prepared):
        if label_map is not None:
            raise ValueError("a prepared training set shares its label space: swap the map there, not per loader")
        return Prepared(manifest.manifest, manifest.records, manifest.labels,
                        steps_per_epoch(len(manifest.records), num_shards, batch_size), manifest.sample_weights)
    if not isinstance(manifest, Manifest):
        manifest, weights = startup_check(manifest)  # the check `recordio_tools verify` runs too
    else:
        weights = load_sample_weights(manifest)  # before the view: a set fused in place keeps its datasets' weights
    manifest = training_view(manifest)
    records = RecordSet(manifest, on_bad_record)
    if validate:
        records.validate(seed=seed)
    try:
        steps = steps_per_epoch(len(records), num_shards, batch_size)
    except ValueError as e:
        raise ConfigError(f"data.batch_size: {e} (the training set {manifest.root})") from None
    labels = LabelSpace.from_manifest(manifest, device, label_map)
    return Prepared(manifest, records, labels, steps, weights)
