"""Which rank owns which class: contiguous class ranges of ceil(C / W) classes.

With C classes on W ranks, rank r owns [min(r*q, C), min((r+1)*q, C)) with q = ceil(C / W): the
split of `torch.chunk` and of DTensor's `Shard(0)`. Matching DTensor is what lets
torch.distributed.checkpoint save the FC rows from W ranks and load them on any other number
(fftrain.training.checkpoint). The last ranks may own fewer classes, or none when C is small against W.
Pure functions of (C, W): every rank computes the same split with no communication.
"""

from __future__ import annotations

import torch


def _check(num_classes: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The classes [start, end) owned by `rank` (possibly empty for the last ranks)."""
    _check(num_classes, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range [0, {world_size})")
    per_rank = _per_rank(num_classes, world_size)
    return min(rank * per_rank, num_classes), min((rank + 1) * per_rank, num_classes)


def _per_rank(num_classes: int, world_size: int) -> int:
    return max(-(-num_classes // world_size), 1)


def shard_ranges(num_classes: int, world_size: int) -> list[tuple[int, int]]:
    """`shard_range` of every rank, in rank order."""
    return [shard_range(num_classes, r, world_size) for r in range(world_size)]


def owner_of(class_ids: torch.Tensor, num_classes: int, world_size: int) -> torch.Tensor:
    """The rank owning each class id (int64, same shape and device as `class_ids`)."""
    _check(num_classes, world_size)
    ids = torch.as_tensor(class_ids, dtype=torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"class id {bad} out of range [0, {num_classes})")
    return torch.div(ids, _per_rank(num_classes, world_size), rounding_mode="floor")
