"""Run a function on N gloo processes on this machine and collect what each rank returns.

    results = run_distributed(fn, world_size=2, args=(x,))   # fn(ctx, *args) -> picklable

`fn` must be a module-level function (it is pickled into spawned processes). Each rank gets a
`DistContext` on the CPU with the WORLD group. An exception on any rank fails the call with
that rank's traceback.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fftrain.distributed import DistContext


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, init_file, fn, args, result_dir):
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    ctx = DistContext(rank=rank, local_rank=rank, world_size=world_size, device=torch.device("cpu"),
                      group=dist.group.WORLD)
    try:
        out = fn(ctx, *args)
        torch.save({"ok": True, "value": out}, os.path.join(result_dir, f"rank{rank}.pt"))
    except BaseException:  # report to the parent, which re-raises with this text
        torch.save({"ok": False, "value": traceback.format_exc()}, os.path.join(result_dir, f"rank{rank}.pt"))
        raise
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, args: tuple = ()) -> list:
    """Run `fn(ctx, *args)` on `world_size` gloo ranks; return the per-rank results in rank order."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(_worker, args=(world_size, init_file, fn, args, tmp), nprocs=world_size,
                           join=True, start_method="spawn")
        results = []
        for rank in range(world_size):
            payload = torch.load(os.path.join(tmp, f"rank{rank}.pt"), weights_only=False)
            if not payload["ok"]:
                raise AssertionError(f"rank {rank} failed:\n{payload['value']}")
            results.append(payload["value"])
        return results
