"""Small file helpers of a relabel: the fixed-name temporaries (safe under the relabel lock), atomic
JSON/text writes with the folder fsynced, file hashes, the exclusive lock on TRAINSET/.relabel.lock
and the tests' kill hook (FFTRAIN_RELABEL_TEST_KILL)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

from ..files import write_text_atomic
from ..manifest import MANIFEST_FILE
from ..strict_json import read_json
from .label_maps import RelabelError

JOURNAL_FORMAT = "fftrain-relabel-journal"
JOURNAL_FILE = "relabel.journal.json"
LABEL_MAP_COPY = "relabel_label_map.json"  # in place: the map applied, beside manifest.json
OUT_LABEL_MAP = "label_map.json"  # --out: the map applied, in DIR
LOCK_FILE = ".relabel.lock"
TMP_SUFFIX = ".relabel-tmp"
KILL_ENV = "FFTRAIN_RELABEL_TEST_KILL"
KILL_POINTS = ("record", "pending", "renamed", "done", "manifest")
BUFFER = 1 << 20  # read/write buffer and hashing block


def _manifest_file(trainset: str) -> str:
    return os.path.join(trainset, MANIFEST_FILE) if os.path.isdir(trainset) else trainset


def _read_json_body(path: str) -> dict:
    body = read_json(path, RelabelError)
    if not isinstance(body, dict):
        raise RelabelError(f"{path}: expected a JSON object, got {type(body).__name__}")
    return body


def _temp_of(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TMP_SUFFIX}")


def _write_atomic(path: str, text: str) -> None:
    """Write through a fixed-name temporary file (safe under the relabel lock), fsync, rename, fsync the folder."""
    write_text_atomic(path, text, tmp=_temp_of(path), sync_dir=True)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BUFFER), b""):
            h.update(block)
    return h.hexdigest()


class _KillHook:
    """FFTRAIN_RELABEL_TEST_KILL="POINT:N": SIGKILL at the Nth POINT (tests of crash safety only)."""

    def __init__(self):
        spec = os.environ.get(KILL_ENV, "")
        self.point, self.at, self.count = None, 0, 0
        if not spec:
            return
        point, _, n = spec.partition(":")
        if point not in KILL_POINTS or not n.isdigit() or int(n) < 1:
            raise RelabelError(f"{KILL_ENV}={spec!r}: expected POINT:N with POINT one of {list(KILL_POINTS)}, N >= 1")
        self.point, self.at = point, int(n)

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        self.count += 1
        if self.count >= self.at:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class _Lock:
    """Exclusive, non-blocking flock on TRAINSET/.relabel.lock."""

    def __init__(self, root: str):
        self.path = os.path.join(root, LOCK_FILE)
        self._file = None

    def __enter__(self):
        import fcntl

        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RelabelError(f"{self.path}: another relabel is running on this training set") from None
        return self

    def __exit__(self, *exc):
        self._file.close()  # closing frees the lock
