"""The global-order plan both readers follow: which keys and which augmentation, step by step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from fftrain.data.augment import StepParams, step_params
from fftrain.data.sharding import epoch_order, rank_batches


@dataclass(frozen=True)
class BatchPlan:
    """One rank's batch at (epoch, step): combined-index keys and augmentation parameters."""

    epoch: int
    step: int
    keys: np.ndarray  # [B] int64
    params: StepParams


def plan_stream(num_records: int, *, seed: int, epoch: int, start_step: int, shard_id: int, num_shards: int,
                batch_size: int, image_size: int, flip: bool, strong: bool, shuffle: bool = True
                ) -> Iterator[BatchPlan]:
    """Endless plans from (epoch, start_step) on, rolling over into the next epochs."""
    step0 = start_step
    while True:
        order = epoch_order(num_records, seed, epoch, shuffle)
        batches = rank_batches(order, shard_id=shard_id, num_shards=num_shards, batch_size=batch_size,
                               start_step=step0)
        for step, keys in enumerate(batches, start=step0):
            params = step_params(seed, epoch, step, shard_id=shard_id, num_shards=num_shards, batch_size=batch_size,
                                 image_size=image_size, flip=flip, strong=strong)
            yield BatchPlan(epoch, step, keys, params)
        epoch, step0 = epoch + 1, 0
