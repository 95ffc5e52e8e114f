"""Read leases: a command reading a checkpoint says so, and a training run's pruning (`keep_last`) leaves
that checkpoint alone until the command is done.

    with read_lease("runs/r50/checkpoints/step-00300000"):
        fuse(...)                                # the trainer's pruning skips step-00300000 meanwhile

A lease is a file `<checkpoints>/.read-leases/<checkpoint>.<host>.<pid>`, removed when the command ends.
One whose process is gone (same host, pid not running) is stale and ignored; one from another host (a
shared filesystem) counts for `REMOTE_LEASE_S` after it was written, since its process cannot be checked
from here. A checkpoint in a folder the command cannot write to is read without a lease (nothing can
prune it from here either).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

LEASE_DIR = ".read-leases"
REMOTE_LEASE_S = 24 * 3600


def _lease_folder(checkpoint: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), LEASE_DIR)


@contextlib.contextmanager
def read_lease(checkpoint: str):
    """Hold a lease on the checkpoint folder `checkpoint` for the `with` block (no lease, and nothing
    written, when it is not an existing folder)."""
    if not os.path.isdir(checkpoint):
        yield
        return
    folder = _lease_folder(checkpoint)
    path = os.path.join(folder, f"{os.path.basename(os.path.abspath(checkpoint))}.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{time.time()}\n")
    except OSError:  # a read-only checkpoint folder: nothing here prunes it
        path = None
    try:
        yield
    finally:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            with contextlib.suppress(OSError):  # only when no other lease is in it
                os.rmdir(folder)


def _live(lease_name: str, folder: str) -> bool:
    host, _, pid = lease_name.rpartition(".")  # host names may hold dots: the pid is after the last one
    if not pid.isdigit():
        return False
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True
    try:
        return time.time() - os.path.getmtime(os.path.join(folder, lease_name)) < REMOTE_LEASE_S
    except FileNotFoundError:
        return False


def is_leased(checkpoint: str) -> bool:
    """Whether a live command holds a read lease on `checkpoint`."""
    folder = _lease_folder(checkpoint)
    prefix = os.path.basename(os.path.abspath(checkpoint)) + "."
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return False
    return any(name.startswith(prefix) and _live(name[len(prefix):], folder) for name in names)
