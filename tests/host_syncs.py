"""Count the operations that make the host wait for the device (a CUDA stream sync), on any device.

    with HostSyncCounter() as syncs:
        trainer.train_step(batch)
    assert syncs.events == [], syncs.describe()

On CUDA these block the CPU until the queued kernels have run: reading a device value on the host
(`.item()`, `int(t)`, `bool(t)`, `if t.any():`, indexing with a 0-d tensor), and the ops whose output
shape depends on the data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, ...). On the CPU
the same calls run without a wait, so counting them here finds the syncs a GPU run would pay, without a
GPU. Two kinds are invisible to the dispatcher on a CPU tensor and are counted by wrapping the methods:
`tolist()` and `numpy()`; a `.cpu()` / `.to("cpu")` of a CPU tensor does nothing and cannot be seen
(torch.cuda.set_sync_debug_mode("error") covers those on a GPU).
"""

from __future__ import annotations

import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops (overload packet names) that always read device memory on the host
SYNC_OPS = frozenset({
    "_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "argwhere", "masked_select",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive", "bincount",
})
# ops that sync only when given a boolean mask as an index
MASK_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
WRAPPED_METHODS = ("tolist", "numpy")


def _is_mask_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices)


def _needs_sync(func, args, kwargs) -> bool:
    name = func.overloadpacket.__name__
    if name in SYNC_OPS:
        return True
    if name in MASK_INDEX_OPS:
        return _is_mask_index(args)
    if name == "repeat_interleave":  # tensor repeats: the output size is their sum unless it is given
        return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None
    return False


def _caller() -> str:
    """The innermost frame outside torch that asked for the op (file:line function), for the failure message."""
    stack = traceback.extract_stack()[:-2]  # without this function and the hook that called it
    frames = [f for f in stack if "site-packages" not in f.filename and not f.filename.endswith("host_syncs.py")]
    frame = (frames or stack)[-1]
    return f"{'/'.join(frame.filename.split('/')[-2:])}:{frame.lineno} {frame.name}"


class HostSyncCounter(TorchDispatchMode):
    """Records (op, caller) for every host-syncing operation run inside the `with` block."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _needs_sync(func, args, kwargs):
            self.events.append((str(func), _caller()))
        return func(*args, **kwargs)

    def __enter__(self):
        for name in WRAPPED_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._saved.items():
                if original is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, original)

    def _wrap(self, name, method):
        events = self.events

        def counted(tensor, *args, **kwargs):
            events.append((f"Tensor.{name}", _caller()))
            return method(tensor, *args, **kwargs)

        return counted

    def describe(self) -> str:
        return f"{len(self.events)} host sync(s): " + "; ".join(f"{op} at {where}" for op, where in self.events)
