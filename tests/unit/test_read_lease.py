"""Read leases: pruning skips a checkpoint a command is reading, and forgets leases of dead processes."""

import os
import socket
import subprocess
import sys

from fftrain.training.checkpoint import META_FILE, checkpoint_name, complete_checkpoints
from fftrain.training.checkpoint.dcp_io import _prune
from fftrain.training.read_lease import LEASE_DIR, is_leased, read_lease


def _checkpoints(root, steps):
    for step in steps:
        path = root / checkpoint_name(step)
        path.mkdir(parents=True)
        (path / META_FILE).write_text("{}")
    return [str(root / checkpoint_name(s)) for s in steps]


def test_pruning_keeps_a_leased_checkpoint_until_the_lease_ends(tmp_path):
    first, second, third = _checkpoints(tmp_path, [100, 200, 300])
    with read_lease(first):
        assert is_leased(first) and not is_leased(second)
        _prune(str(tmp_path), keep_last=1)
        assert [p for _, p in complete_checkpoints(str(tmp_path))] == [first, third]
    assert not is_leased(first)
    assert not (tmp_path / LEASE_DIR).exists()  # the lease folder goes with the last lease
    _prune(str(tmp_path), keep_last=1)
    assert [p for _, p in complete_checkpoints(str(tmp_path))] == [third]


def test_a_lease_of_a_dead_process_is_ignored(tmp_path):
    (old,) = _checkpoints(tmp_path, [100])
    _checkpoints(tmp_path, [200])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LEASE_DIR).mkdir()
    (tmp_path / LEASE_DIR / f"{checkpoint_name(100)}.{socket.gethostname()}.{dead.stdout.strip()}").write_text("0\n")
    assert not is_leased(old)
    _prune(str(tmp_path), keep_last=1)
    assert not os.path.exists(old)


def test_a_missing_checkpoint_gets_no_lease_and_nothing_is_written(tmp_path):
    with read_lease(str(tmp_path / "nope" / "step-00000001")):
        pass
    assert os.listdir(tmp_path) == []
