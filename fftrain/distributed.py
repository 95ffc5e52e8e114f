"""The one owner of the process topology.

`init_distributed()` is called once in `main()`; the `DistContext` it returns is passed down.
No other module reads RANK / LOCAL_RANK / WORLD_SIZE. Every helper here also works with no
process group (a single process without torchrun).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, node-local rank, world size, its device and group."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        return dist.get_backend(self.group) if self.group is not None else None


def single_process_context(device: str | torch.device = "cpu") -> DistContext:
    """A context for one process and no process group (tests, tools, notebooks)."""
    return DistContext(rank=0, local_rank=0, world_size=1, device=torch.device(device), group=None)


def pick_device(local_rank: int, device: str = "auto") -> torch.device:
    """`auto` takes cuda:<local_rank> when CUDA is there, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; choose 'auto', 'cuda' or 'cpu'")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Build the context from torchrun's environment; a plain `python` run gets world size 1.

    The backend follows the device: NCCL for CUDA, gloo for the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = pick_device(local_rank, device)
    if world_size == 1 and "MASTER_ADDR" not in os.environ:
        return DistContext(rank, local_rank, 1, torch_device, None)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=torch_device if backend == "nccl" else None,
        )
    return DistContext(rank, local_rank, world_size, torch_device, dist.group.WORLD)


def launch_rank() -> int:
    """This process's global rank as torchrun set it, before any process group exists (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def elastic_run_id() -> str:
    """torchrun's job id (the same across its restarts of the workers); '' without torchrun.
    torchrun --standalone and a default rendezvous give every launch a fresh one."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return "" if run_id == "none" else run_id


def destroy_distributed(ctx: DistContext) -> None:
    if ctx.group is not None and dist.is_initialized():
        dist.destroy_process_group()


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
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


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
