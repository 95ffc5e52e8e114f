"""Bounded waits for multi-process tests: on a deadline, the stuck processes' Python stacks, then the whole tree ends.

    output = run_watched(cmd, deadline_s=300, cwd=REPO, env=env)      # a torchrun job; raises on the deadline
    out = communicate_within(proc, deadline_s=300)   # a Popen started with start_new_session=True

Workers register `faulthandler` on SIGUSR1 (fftrain/train.py, tests/dist_harness.py), so a stuck worker prints
where it is; the launcher itself is not signalled (SIGUSR1 would end it before its children).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

STACK_SIGNAL = signal.SIGUSR1


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...); [] where there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _live_pids_where(field: int, value: int) -> list[int]:
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = proc_stat(int(entry))
        if fields and fields[0] != "Z" and int(fields[field]) == value:
            pids.append(int(entry))
    return pids


def session_pids(session_id: int) -> list[int]:
    """Every live process of a session (the tree a test started with start_new_session=True)."""
    return _live_pids_where(3, session_id)


def children_of(parent: int) -> list[int]:
    """The live direct children of `parent` (torchrun's workers, a command's worker processes)."""
    return _live_pids_where(1, parent)


def is_alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return bool(fields) and fields[0] != "Z"


def rank_of(pid: int) -> int | None:
    """The RANK torchrun gave a worker, from its environment; None for another process."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return None
    return int(env[b"RANK"]) if b"RANK" in env else None


def request_stacks(pids: list[int], skip: int | None = None) -> None:
    for pid in pids:
        if pid != skip:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, STACK_SIGNAL)


def kill_session(session_id: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session_id, signal.SIGKILL)


class DeadlineExceeded(AssertionError):
    pass


def run_watched(cmd: list[str], deadline_s: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with stdout+stderr captured as text; past the deadline, stacks then SIGKILL of the tree."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen_kwargs)
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        out, err = _stacks_then_kill(proc)
        raise DeadlineExceeded(f"{' '.join(cmd[:6])} ... still running after {deadline_s:.0f} s; stacks and output:\n"
                               f"{out[-6000:]}\n{err[-12000:]}") from None
    finally:
        kill_session(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _stacks_then_kill(proc: subprocess.Popen) -> tuple[str, str]:
    request_stacks(session_pids(proc.pid), skip=proc.pid)
    time.sleep(3.0)
    kill_session(proc.pid)
    out, err = proc.communicate(timeout=30)
    return out or "", err or ""


def communicate_within(proc: subprocess.Popen, deadline_s: float) -> str:
    """For a Popen started with start_new_session=True, stdout piped and stderr merged into it; the caller
    ends the tree with `kill_session(proc.pid)` in a `finally`."""
    try:
        out, _ = proc.communicate(timeout=deadline_s)
        return out
    except subprocess.TimeoutExpired:
        out, err = _stacks_then_kill(proc)
        raise DeadlineExceeded(f"still running after {deadline_s:.0f} s; stacks and output:\n{out[-12000:]}\n{err}"
                               ) from None
