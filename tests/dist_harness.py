"""Run a function on N gloo processes on this machine and collect what each rank returns.

    results = run_distributed(fn, world_size=2, args=(x,))   # fn(ctx, *args) -> picklable

`fn` must be a module-level function (it is pickled into spawned processes). Each rank gets a
`DistContext` on the CPU with the WORLD group. An exception on any rank fails the call with
that rank's traceback; ranks still running at the deadline fail it with their Python stacks,
and every rank is ended.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fftrain.distributed import DistContext

DEADLINE_S = float(os.environ.get("FFTRAIN_TEST_DEADLINE_S", "300"))


def _worker(rank, world_size, init_file, fn, args, result_dir):
    stacks = open(os.path.join(result_dir, f"stacks{rank}.txt"), "w")
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    faulthandler.enable(file=stacks, all_threads=True)  # a crash at exit leaves its Python stacks for the parent
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    ctx = DistContext(rank=rank, local_rank=rank, world_size=world_size, device=torch.device("cpu"),
                      group=dist.group.WORLD)
    try:
        out = fn(ctx, *args)
        torch.save({"ok": True, "value": out}, os.path.join(result_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears its group down while a peer still talks to it
    except BaseException:  # report to the parent, which re-raises with this text
        torch.save({"ok": False, "value": traceback.format_exc()}, os.path.join(result_dir, f"rank{rank}.pt"))
        raise
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, args: tuple = (), deadline_s: float = DEADLINE_S) -> list:
    """Run `fn(ctx, *args)` on `world_size` gloo ranks; return the per-rank results in rank order."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        context = mp.start_processes(_worker, args=(world_size, init_file, fn, args, tmp), nprocs=world_size,
                                     join=False, start_method="spawn")
        exit_error = None
        try:
            _join_within(context, deadline_s, tmp)
        except mp.ProcessRaisedException:
            pass  # the rank's own traceback is in its result file, read below
        except mp.ProcessExitedException as e:  # a signal or exit code, possibly after a good result
            exit_error = e
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        results = _results(tmp, world_size)
        if exit_error is not None:
            raise AssertionError(f"every rank returned, but then: {exit_error}\n{_written_stacks(tmp, world_size)}")
        return results


def _join_within(context, deadline_s: float, tmp: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            raise AssertionError(f"ranks still running after {deadline_s:.0f} s:\n{_stacks(context, tmp)}")


def _stacks(context, tmp: str) -> str:
    running = [(rank, p) for rank, p in enumerate(context.processes) if p.is_alive()]
    for _, process in running:
        os.kill(process.pid, signal.SIGUSR1)
    time.sleep(2.0)
    return "\n".join(f"--- rank {rank} ---\n" + _stack_file(tmp, rank) for rank, _ in running)


def _written_stacks(tmp: str, world_size: int) -> str:
    """What faulthandler wrote when a rank crashed (its Python threads at the crash)."""
    texts = [(rank, _stack_file(tmp, rank)) for rank in range(world_size)]
    return "\n".join(f"--- rank {rank} ---\n{text}" for rank, text in texts if text.strip())


def _stack_file(tmp: str, rank: int) -> str:
    path = os.path.join(tmp, f"stacks{rank}.txt")
    return open(path).read() if os.path.exists(path) else ""


def _results(tmp: str, world_size: int) -> list:
    payloads = {}
    for rank in range(world_size):
        path = os.path.join(tmp, f"rank{rank}.pt")
        if os.path.exists(path):
            payloads[rank] = torch.load(path, weights_only=False)  # written by _worker above
    for rank, payload in payloads.items():
        if not payload["ok"]:
            raise AssertionError(f"rank {rank} failed:\n{payload['value']}")
    missing = sorted(set(range(world_size)) - set(payloads))
    if missing:
        raise AssertionError(f"rank(s) {missing} died without a result")
    return [payloads[rank]["value"] for rank in range(world_size)]
