"""Pieces shared by the backbones: activation checkpointing that keeps BatchNorm statistics right,
and the fp32 embedding head under a caller's autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


class _RestoreBatchNormBuffers:
    """Context manager: the BatchNorm buffers of `module` are put back as they were on exit.

    Used as the recomputation context of `checkpointed`: in backward the checkpointed block runs
    its forward a second time, and a training-mode BatchNorm would otherwise update its running
    mean/var and `num_batches_tracked` twice per step.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> None:
        self.saved = [
            (buf, buf.detach().clone())
            for m in self.module.modules()
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
            for buf in m.buffers(recurse=False)
        ]

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for buf, value in self.saved:
                buf.copy_(value)
        self.saved = []


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` under non-reentrant activation checkpointing.

    Only `x` is kept for backward; the activations inside `module` are recomputed there. In eager
    mode the recomputation leaves BatchNorm running statistics untouched, so a checkpointed model
    ends a step with the same state as an unchecked one. Under torch.compile the recomputation is
    done on the graph (buffer updates are not replayed), and the plain call is used.
    """
    if torch.compiler.is_compiling():
        return checkpoint(module, x, use_reentrant=False)

    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _RestoreBatchNormBuffers(module)

    return checkpoint(module, x, use_reentrant=False, context_fn=contexts)


@contextlib.contextmanager
def fp32_region(x: torch.Tensor, enabled: bool) -> Iterator[None]:
    """Switch the caller's autocast off for the embedding head (as insightface runs its fc).

    The head's input is then cast to the head's own parameter dtype by the caller; a model cast
    wholesale to bf16 therefore keeps working.
    """
    if enabled and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            yield
    else:
        yield


def check_input(x: torch.Tensor, size: int) -> None:
    """Raise ValueError unless `x` is [B, 3, size, size]."""
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"expected input of shape [B, 3, {size}, {size}], got {list(x.shape)}")
