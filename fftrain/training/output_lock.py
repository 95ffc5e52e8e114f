"""One trainer per output folder: `<output_dir>/.fftrain.lock` names its holder (host, pid).

Global rank 0 takes the lock before anything else is written to the folder and removes it at the
end. A second trainer on the same folder is refused, naming the holder. A lock left behind is
taken over:

- on the holder's host, when its process is gone (or its pid now belongs to another process,
  told apart by the process start time): quietly when the holder was an earlier attempt of the
  same torchrun job (same TORCHELASTIC_RUN_ID: torchrun ends every worker before it restarts
  them), else with a warning;
- on another host, only by the same torchrun job (its global rank 0 moved to another node).

A lock held on another host cannot be checked from here; the message says which host and pid to
look at and which file to delete if that run is over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass

from recordio_tools.files import write_text_atomic

from fftrain.errors import UserError

LOCK_FILE = ".fftrain.lock"


class OutputLockedError(UserError):
    """The output folder belongs to a trainer that is still running."""


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started: float
    """The holder's process start time (Linux: clock ticks since boot, from /proc), 0 if unknown."""
    run_id: str
    """torchrun's TORCHELASTIC_RUN_ID of the holder ('' without torchrun)."""
    since: str


def _proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (state, ppid, ...); [] where there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> float:
    fields = _proc_stat(pid)
    return float(fields[19]) if len(fields) > 19 else 0.0


def this_process(run_id: str) -> LockHolder:
    return LockHolder(socket.gethostname(), os.getpid(), _process_start(os.getpid()), run_id,
                      time.strftime("%Y-%m-%d %H:%M:%S"))


def _alive(holder: LockHolder) -> bool:
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    fields = _proc_stat(holder.pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # exited, not yet reaped by its parent (a torchrun agent about to restart it)
    started = float(fields[19]) if len(fields) > 19 else 0.0
    return not (holder.started and started and started != holder.started)


def read_holder(path: str) -> LockHolder | None:
    """The lock's holder, or None when the file is gone or unreadable (a half-written lock)."""
    try:
        with open(path, encoding="utf-8") as f:
            return LockHolder(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


class OutputLock:
    """Held by global rank 0 for the whole run; `release()` removes the file if it is still ours."""

    def __init__(self, output_dir: str, run_id: str = "", warn=print):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.me = this_process(run_id)
        self._warn = warn
        self.held = False

    def acquire(self) -> "OutputLock":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        body = json.dumps(asdict(self.me))
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._take_over(body)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
        self.held = True
        return self

    def _take_over(self, body: str) -> None:
        holder = read_holder(self.path)
        if holder is not None and not self._may_take(holder):
            raise OutputLockedError(self._refusal(holder))
        if holder is not None and not (self.me.run_id and holder.run_id == self.me.run_id):
            self._warn(f"fftrain: warning: {os.path.dirname(self.path)} was locked by pid {holder.pid} on "
                       f"{holder.host} (since {holder.since}), which is no longer running; taking the lock over")
        write_text_atomic(self.path, body, tmp=f"{self.path}.{self.me.pid}.tmp")
        if read_holder(self.path) != self.me:  # another trainer took it over at the same moment
            holder = read_holder(self.path)
            raise OutputLockedError(self._refusal(holder) if holder else f"{self.path}: lost a race for the lock")

    def _may_take(self, holder: LockHolder) -> bool:
        if holder.host == self.me.host:
            return not _alive(holder)
        # a torchrun restart of the same job whose global rank 0 now runs on another node
        return bool(self.me.run_id) and holder.run_id == self.me.run_id

    def _refusal(self, holder: LockHolder) -> str:
        where = os.path.dirname(self.path)
        if holder.host == self.me.host:
            return (f"{where} is in use by another trainer (pid {holder.pid} on {holder.host}, since {holder.since}); "
                    "choose another output_dir or wait for that run to end")
        return (f"{where} is in use by another trainer (pid {holder.pid} on host {holder.host}, since "
                f"{holder.since}); choose another output_dir, or if that run is over, delete {self.path}")

    def release(self) -> None:
        if self.held and read_holder(self.path) == self.me:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.held = False
