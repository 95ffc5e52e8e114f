"""Which records each rank reads at each step: pure functions (numpy only, no DALI, no torch).

Conventions
-----------
- The training set has N records: the keys 0..N-1 of the manifest's combined index, in the order
  of the shards concatenated (`Manifest.index_path()`).
- W ranks (`num_shards`), rank r (`shard_id`), B images per rank per step (`batch_size`); the
  global batch is W*B.
- **Global order** (the default): epoch e visits `epoch_order(N, seed, e)`, a permutation that
  depends only on (seed, e). Global step t takes the slice `order[t*W*B : (t+1)*W*B]` and rank r
  takes its r-th block of B, so the images of a global step do not depend on how they are split
  over ranks.
- **Tail policy**: `steps_per_epoch = N // (W*B)`, the same on every rank. The last
  `N - steps*W*B` records of each epoch's permutation are not read in that epoch (a different
  random set each epoch), so no rank ever waits at a collective for a batch another rank does
  not have. This is DALI's `last_batch_policy=DROP` made rank-independent.
- **Reader order** (`fn.readers.mxnet`'s own split, `order="reader"` in the DALI pipeline): rank
  r reads the contiguous range `reader_shard_range(...)` of the keys (DALI's `start_index`),
  rotated by one shard every epoch (`reader_shard_for_epoch`, what `stick_to_shard=False`
  does), shuffled by DALI's buffer; every rank stops after the same `steps_per_epoch` batches.
  The smallest DALI shard holds `N // W` records and `(N // W) // B == N // (W*B)`, so every
  rank has enough.
- **Resume**: a position is (epoch, step) with step in [0, steps_per_epoch); a global step count
  converts with `epoch_position` / `global_step`.
- Random numbers for a step (flip, augmentation) come from `step_rng(seed, epoch, step)`, drawn
  for the whole global batch and sliced per rank, so they also do not depend on W.
"""

from __future__ import annotations

import numpy as np

_SEED_MASK = (1 << 31) - 1


def steps_per_epoch(num_samples: int, num_shards: int, batch_size: int) -> int:
    """Full global batches in one epoch; the rest of the epoch is dropped (same on every rank)."""
    if num_shards < 1 or batch_size < 1:
        raise ValueError(f"num_shards and batch_size must be >= 1, got {num_shards} and {batch_size}")
    steps = num_samples // (num_shards * batch_size)
    if steps == 0:
        raise ValueError(f"{num_samples} images do not fill one global batch of {num_shards} ranks x "
                         f"{batch_size} images; use a smaller batch_size")
    return steps


def dropped_per_epoch(num_samples: int, num_shards: int, batch_size: int) -> int:
    """Records of each epoch that no rank reads (the tail policy)."""
    return num_samples - steps_per_epoch(num_samples, num_shards, batch_size) * num_shards * batch_size


def derive_seed(seed: int, *parts: int) -> int:
    """A 31-bit seed for (seed, *parts) that DALI and numpy both accept."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(p) for p in parts]]).generate_state(1)
    return int(state[0]) & _SEED_MASK


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order in which epoch `epoch` visits the keys 0..N-1 (identity when not shuffling)."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), 0x0DE4]))
    return rng.permutation(num_samples).astype(np.int64)


def rank_batch(order: np.ndarray, step: int, *, shard_id: int, num_shards: int, batch_size: int) -> np.ndarray:
    """The keys rank `shard_id` reads at `step` of the epoch whose order is `order`."""
    _check_rank(shard_id, num_shards)
    start = (step * num_shards + shard_id) * batch_size
    if step < 0 or start + batch_size > len(order):
        raise IndexError(f"step {step} is past the end of an epoch of {len(order)} records "
                         f"({num_shards} ranks x {batch_size})")
    return order[start:start + batch_size]


def rank_batches(order: np.ndarray, *, shard_id: int, num_shards: int, batch_size: int,
                 start_step: int = 0) -> np.ndarray:
    """All batches of rank `shard_id` from `start_step` to the end of the epoch, shape [steps, B]."""
    _check_rank(shard_id, num_shards)
    steps = steps_per_epoch(len(order), num_shards, batch_size)
    check_step(start_step, steps)
    grid = order[:steps * num_shards * batch_size].reshape(steps, num_shards, batch_size)
    return grid[start_step:, shard_id]


def check_step(step: int, steps: int) -> None:
    if not 0 <= step < steps:
        raise ValueError(f"start step {step} outside the epoch's steps [0, {steps})")


def epoch_position(global_step: int, steps: int) -> tuple[int, int]:
    """(epoch, step within the epoch) of the `global_step`-th step of a run (both from 0)."""
    if global_step < 0:
        raise ValueError(f"global step must be >= 0, got {global_step}")
    epoch, step = divmod(global_step, steps)
    return epoch, step


def global_step(epoch: int, step: int, steps: int) -> int:
    check_step(step, steps)
    return epoch * steps + step


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator for the random choices (flip, augmentation) of one global step."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(step), 0xF11B]))


# ---------------------------------------------------------------------------------------------
# fn.readers.mxnet's own split


def reader_shard_range(shard_id: int, num_shards: int, num_samples: int) -> tuple[int, int]:
    """[start, end) of the keys in DALI reader shard `shard_id` (DALI's start_index arithmetic)."""
    _check_rank(shard_id, num_shards)
    return num_samples * shard_id // num_shards, num_samples * (shard_id + 1) // num_shards


def reader_shard_for_epoch(shard_id: int, num_shards: int, epoch: int) -> int:
    """The DALI shard rank `shard_id` reads in `epoch`: one further each epoch."""
    _check_rank(shard_id, num_shards)
    return (shard_id + epoch) % num_shards


def _check_rank(shard_id: int, num_shards: int) -> None:
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
