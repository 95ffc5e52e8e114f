"""The one owner of the process topology.

`init_distributed()` is called once in `main()`; the `DistContext` it returns is passed down.
No other module reads RANK / LOCAL_RANK / WORLD_SIZE. Every helper here also works with no
process group (a single process without torchrun).
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fftrain.distributed.comm import clear_placement_rules


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


STARTUP_TIMEOUT_ENV = "FFTRAIN_STARTUP_TIMEOUT_S"
"""Seconds a process-group start-up may take before this rank gives up (default 300): a start-up that cannot
complete fails with a message, and torchrun's next restart round retries it."""


class StartupTimeout(RuntimeError):
    """The process group could not start within the start-up timeout (a peer never arrived)."""


def startup_timeout_s() -> float:
    return float(os.environ.get(STARTUP_TIMEOUT_ENV, "300"))


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
        store = None
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            store = round_store(rank, world_size, startup_timeout_s())
            store.set_timeout(datetime.timedelta(seconds=timeout_s))
        dist.init_process_group(
            backend=backend,
            store=store,
            rank=rank if store is not None else -1,
            world_size=world_size if store is not None else -1,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=torch_device if backend == "nccl" else None,
        )
    return DistContext(rank, local_rank, world_size, torch_device, dist.group.WORLD)


def round_store(rank: int, world_size: int, timeout_s: float) -> dist.Store:
    """A key-value store that belongs to this restart round alone, with every rank connected to it.

    torchrun's agent keeps one store for all restart rounds, and the keys a process group writes carry no
    round, so a restarted group reads its dead predecessors' gloo addresses (connect: Connection refused) or
    barrier counts (a hang). Rank 0 hosts a fresh store and publishes its port in the agent's store; a store
    hosted by a worker can only belong to the live round, because torchrun stops every worker of a round
    before it starts the next one. Raises `StartupTimeout` when the round cannot assemble in `timeout_s`.
    """
    host, agent_port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    deadline = time.monotonic() + timeout_s
    step_timeout = datetime.timedelta(seconds=max(1.0, min(2.0, timeout_s)))
    agent = dist.TCPStore(host, agent_port, world_size=world_size, is_master=False,
                          timeout=datetime.timedelta(seconds=timeout_s))
    port_key = f"fftrain/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/round_store_port"
    if rank == 0:
        store = dist.TCPStore(host, 0, world_size=world_size, is_master=True, wait_for_workers=False,
                              timeout=step_timeout)
        agent.set(port_key, str(store.port))
    else:
        store = _connect_to_round_store(agent, host, port_key, world_size, deadline, step_timeout, timeout_s)
    _wait_for_all_ranks(store, rank, world_size, deadline, timeout_s)
    return store


def _connect_to_round_store(agent: dist.Store, host: str, port_key: str, world_size: int, deadline: float,
                            step_timeout: datetime.timedelta, timeout_s: float) -> dist.Store:
    """Rank 0's store of this round: the published port may still be the last round's, whose host is dead."""
    last_error = "rank 0 never published its store"
    while time.monotonic() < deadline:
        try:
            port = int(agent.get(port_key))
            return dist.TCPStore(host, port, world_size=world_size, is_master=False, timeout=step_timeout)
        except (RuntimeError, ValueError) as e:  # DistStoreError / DistNetworkError derive from RuntimeError
            last_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            time.sleep(0.2)
    raise StartupTimeout(f"process-group start-up: could not reach rank 0's store at {host} within "
                         f"{timeout_s:.0f} s ({last_error}); set {STARTUP_TIMEOUT_ENV} to wait longer")


def _wait_for_all_ranks(store: dist.Store, rank: int, world_size: int, deadline: float, timeout_s: float) -> None:
    """A store-side barrier with a deadline, so the process group's own connect (which waits for the long
    collective timeout) only starts once every rank is known to be there."""
    store.add("fftrain/arrived", 1)
    while (arrived := store.add("fftrain/arrived", 0)) < world_size:
        if time.monotonic() > deadline:
            raise StartupTimeout(f"process-group start-up: rank {rank} saw {arrived} of {world_size} ranks arrive "
                                 f"within {timeout_s:.0f} s; set {STARTUP_TIMEOUT_ENV} to wait longer")
        time.sleep(0.05)


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
        clear_placement_rules()
        dist.destroy_process_group()
