"""Which rank owns which class: contiguous class ranges, the first ranks taking the remainder.

With C classes on W ranks, rank r owns [start_r, end_r); the first C % W ranks own C // W + 1
classes, the others C // W. Pure functions of (C, W): every rank computes the same split with no
communication, and a run resumed on another world size recomputes it.
"""

from __future__ import annotations

import torch


def _check(num_classes: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The classes [start, end) owned by `rank`; empty (start == end) when num_classes < world_size."""
    _check(num_classes, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range [0, {world_size})")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


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
    base, extra = divmod(num_classes, world_size)
    boundary = extra * (base + 1)
    head = torch.div(ids, base + 1, rounding_mode="floor")
    if base == 0:
        return head
    tail = extra + torch.div(ids - boundary, base, rounding_mode="floor")
    return torch.where(ids < boundary, head, tail)
