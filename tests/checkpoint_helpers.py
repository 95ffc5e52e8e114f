"""A small checkpoint written by the tests (and by a subprocess killed mid-save): 11 classes of 3-d rows,
row-sharded over the ranks, whose values say the step."""

from __future__ import annotations

import torch

from fftrain.distributed.class_sharding import shard_range
from fftrain.training.checkpoint import ShardedRows, save_checkpoint

NUM_CLASSES, DIM = 11, 3


def full(step: int) -> torch.Tensor:
    return torch.arange(NUM_CLASSES * DIM, dtype=torch.float32).reshape(NUM_CLASSES, DIM) + 1000 * step


def rows(ctx, tensor):
    start, end = shard_range(NUM_CLASSES, ctx.rank, ctx.world_size)
    return ShardedRows(tensor[start:end].clone(), NUM_CLASSES)


def save(ctx, root, step):
    replicated = {"model": {"w": torch.full((2,), float(step))}, "label_map": torch.arange(NUM_CLASSES)}
    sharded = {"fc_weight": rows(ctx, full(step)), "fc_momentum": rows(ctx, -full(step))}
    return save_checkpoint(root, step, ctx=ctx, replicated=replicated, sharded=sharded, meta={"note": "t"},
                           rank_state={"torch_rng": torch.get_rng_state()}, keep_last=2)


def stub_backbone_checkpoint(monkeypatch, model):
    """Commands that read a backbone from `--checkpoint` get `model` (unit tests of the commands' own work; the
    installed-package e2e test runs them on a real checkpoint)."""
    import sys
    import types

    stub = types.ModuleType("fftrain.training.checkpoint")
    stub.load_backbone_from_checkpoint = lambda directory: model
    stub.CheckpointError = type("CheckpointError", (ValueError,), {})
    monkeypatch.setitem(sys.modules, "fftrain.training.checkpoint", stub)
