"""Collectives that also work with no process group, and where their tensors must sit.

The rule "NCCL communicates on the device, gloo on the CPU" lives here (`comm_device`,
`check_comm_tensor`) and nowhere else. Every helper is a no-op (or the identity) with no group,
so single-process code and tests call them unconditionally.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

ProcessGroup = dist.ProcessGroup
ReduceOp = dist.ReduceOp


class CommDeviceError(RuntimeError):
    """A tensor handed to a collective is not on the group's communication device (NCCL has no
    backend for CPU tensors: `No backend type associated with device type cpu`)."""


_PLACEMENT_RULES: dict[int, Callable[[torch.Tensor], str | None]] = {}


def clear_placement_rules() -> None:
    _PLACEMENT_RULES.clear()


def is_nccl(group: dist.ProcessGroup | None) -> bool:
    """True when the group's collectives run on NCCL (the one place that compares backend names)."""
    return group is not None and dist.get_backend(group) == dist.Backend.NCCL


def comm_device(group: dist.ProcessGroup | None, device: torch.device | str) -> torch.device:
    """Where tensors for a collective on `group` must sit: the rank's CUDA `device` for NCCL, the
    CPU for gloo; with no group, `device` itself (nothing is communicated)."""
    device = torch.device(device)
    if group is None or is_nccl(group):
        return device
    return torch.device("cpu")


def declare_placement_rule(group: dist.ProcessGroup, rule: Callable[[torch.Tensor], str | None] | None) -> None:
    """Make every collective on `group` also apply `rule(tensor)` (a message when the tensor is
    misplaced, else None); None removes it. Tests use this to treat a gloo group the way NCCL
    treats it, so a tensor left on the host fails on a CPU machine too."""
    if rule is None:
        _PLACEMENT_RULES.pop(id(group), None)
    else:
        _PLACEMENT_RULES[id(group)] = rule


def check_comm_tensor(tensor: torch.Tensor, group: dist.ProcessGroup | None, where: str) -> torch.Tensor:
    """Raise CommDeviceError when `tensor` cannot go through a collective on `group`."""
    if group is None:
        return tensor
    problem = None
    if is_nccl(group) and tensor.device.type != "cuda":
        problem = f"it is on {tensor.device}; NCCL needs CUDA tensors"
    elif not is_nccl(group) and tensor.device.type != "cpu":
        problem = f"it is on {tensor.device}; gloo needs CPU tensors"
    rule = _PLACEMENT_RULES.get(id(group))
    if problem is None and rule is not None:
        problem = rule(tensor)
    if problem:
        raise CommDeviceError(f"{where}: tensor of shape {tuple(tensor.shape)} cannot go through a collective "
                              f"on the {dist.get_backend(group)} group: {problem} (create it on "
                              f"comm_device(group, ctx.device))")
    return tensor


def world_size_of(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group) if group is not None else 1


def rank_of(group: dist.ProcessGroup | None) -> int:
    return dist.get_rank(group) if group is not None else 0


def barrier(group: dist.ProcessGroup | None) -> None:
    if group is not None:
        dist.barrier(group)


def all_reduce_(tensor: torch.Tensor, group: dist.ProcessGroup | None, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce; a no-op with no group."""
    if group is not None and world_size_of(group) > 1:
        check_comm_tensor(tensor, group, "all_reduce")
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def all_gather_list(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape everywhere), in rank order."""
    if group is None or world_size_of(group) == 1:
        return [tensor]
    check_comm_tensor(tensor, group, "all_gather")
    parts = [torch.empty_like(tensor) for _ in range(world_size_of(group))]
    dist.all_gather(parts, tensor, group=group)
    return parts


def broadcast_(tensor: torch.Tensor, src: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """In-place broadcast from group rank `src`; a no-op with no group."""
    if group is not None and world_size_of(group) > 1:
        check_comm_tensor(tensor, group, "broadcast")
        dist.broadcast(tensor, src=dist.get_global_rank(group, src), group=group)
    return tensor


class _Done:
    def wait(self) -> bool:
        return True


def broadcast_async_(tensor: torch.Tensor, src: int, group: dist.ProcessGroup | None):
    """`broadcast_` posted without waiting: returns a handle whose `wait()` completes it (on NCCL the
    current stream waits, the host does not). `tensor` must stay alive and untouched until then."""
    if group is None or world_size_of(group) == 1:
        return _Done()
    check_comm_tensor(tensor, group, "broadcast")
    return dist.broadcast(tensor, src=dist.get_global_rank(group, src), group=group, async_op=True)


def all_to_all_single_(out: torch.Tensor, inp: torch.Tensor, group: dist.ProcessGroup | None, *,
                       output_split_sizes=None, input_split_sizes=None) -> torch.Tensor:
    check_comm_tensor(inp, group, "all_to_all")
    check_comm_tensor(out, group, "all_to_all")
    dist.all_to_all_single(out, inp, output_split_sizes=output_split_sizes, input_split_sizes=input_split_sizes,
                           group=group)
    return out


def broadcast_object(obj, group: dist.ProcessGroup | None, src: int = 0):
    """Rank `src`'s Python object on every rank (plain data only: it is pickled over the wire)."""
    if group is None or world_size_of(group) == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, group=group)
    return holder[0]


def all_gather_object(obj, group: dist.ProcessGroup | None) -> list:
    if group is None or world_size_of(group) == 1:
        return [obj]
    out = [None] * world_size_of(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def gather_object(obj, group: dist.ProcessGroup | None, dst: int = 0) -> list | None:
    """Every rank's object, in rank order, on group rank `dst`; None elsewhere."""
    if group is None or world_size_of(group) == 1:
        return [obj]
    out = [None] * world_size_of(group) if rank_of(group) == dst else None
    dist.gather_object(obj, out, dst=dist.get_global_rank(group, dst), group=group)
    return out
