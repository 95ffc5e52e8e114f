"""Treat a gloo group the way NCCL treats it, on a CPU machine.

NCCL refuses CPU tensors; gloo takes them, and on a CPU machine every tensor is a CPU tensor, so a
tensor that a GPU run would leave on the host (`torch.tensor([x])` with no device) goes unnoticed.
`HostTensorTracker` is a TorchFunctionMode that marks every tensor made without an explicit device
(and everything computed from one) as a host tensor, and clears the mark when a tensor is moved with
`.to(device)`; `nccl_like(group)` installs a placement rule that refuses marked tensors in every
collective helper of fftrain.distributed.comm:

    with HostTensorTracker() as tracker, tracker.nccl_like(ctx.group):
        Trainer(cfg, ctx, data).train()      # CommDeviceError names the collective on a host tensor
"""

from __future__ import annotations

import contextlib
import traceback
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from fftrain.distributed import declare_placement_rule

_FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
              torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace, torch.eye, torch.from_numpy}
_MOVES = {torch.Tensor.to, torch.Tensor.cuda}
_TO_HOST = {torch.Tensor.cpu}


def _caller() -> str:
    """The innermost frame in fftrain/ or recordio_tools/ (where the host tensor was made)."""
    for frame in reversed(traceback.extract_stack()):
        if "/fftrain/" in frame.filename or "/recordio_tools/" in frame.filename:
            return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _names_device(args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str)) for a in args[1:]) or any(
        isinstance(a, torch.Tensor) for a in args[1:])  # .to(other_tensor) takes its device


class HostTensorTracker(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self._host: dict[int, weakref.ref] = {}   # by id: tensors compare elementwise, so no WeakSet
        self._origin: dict[int, str] = {}

    def is_host(self, t: torch.Tensor) -> bool:
        ref = self._host.get(id(t))
        return ref is not None and ref() is t

    def _mark(self, t: torch.Tensor, host: bool, origin: str | None) -> None:
        key = id(t)
        if host:
            self._host[key] = weakref.ref(t, lambda _, key=key: self._forget(key))
            self._origin[key] = origin or self._origin.get(key, "?")
        else:
            self._forget(key)

    def _forget(self, key: int) -> None:
        self._host.pop(key, None)
        self._origin.pop(key, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _FACTORIES:
            source = args[0] if args and isinstance(args[0], torch.Tensor) else None
            host = self.is_host(source) if source is not None else kwargs.get("device") is None
        elif func in _MOVES and _names_device(args, kwargs):
            host = False
        elif func in _TO_HOST:
            host = True
            if out is args[0]:  # .cpu() of a CPU tensor is itself; on a GPU run it is a new host copy
                out = out.view_as(out)
        else:
            host = any(self.is_host(t) for t in _tensors((args, kwargs)))
        origin = None
        if host:
            sources = [self._origin.get(id(t)) for t in _tensors((args, kwargs)) if self.is_host(t)]
            origin = sources[0] if sources else f"{getattr(func, '__name__', func)} at {_caller()}"
        for t in _tensors(out):
            self._mark(t, host, origin)
        return out

    def rule(self, t: torch.Tensor) -> str | None:
        if self.is_host(t):
            return f"it was made on the host ({self._origin.get(id(t), '?')}, no device given); NCCL would refuse it"
        return None

    @contextlib.contextmanager
    def nccl_like(self, group):
        declare_placement_rule(group, self.rule)
        try:
            yield self
        finally:
            declare_placement_rule(group, None)
