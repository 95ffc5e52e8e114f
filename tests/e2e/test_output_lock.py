"""One trainer per output_dir: the lock names its holder; stale locks are taken over."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from fftrain.training.output_lock import LOCK_FILE, OutputLock, OutputLockedError, read_holder
from repo_paths import REPO
from train_helpers import torchrun_settings



def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(folder, **fields) -> None:
    body = {"host": socket.gethostname(), "pid": os.getpid(), "started": 0.0, "run_id": "", "since": "earlier"}
    body.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps(body))


def test_second_trainer_is_refused_naming_host_and_pid(tmp_path):
    first = OutputLock(str(tmp_path)).acquire()
    with pytest.raises(OutputLockedError, match=rf"{tmp_path} is in use by another trainer \(pid {os.getpid()} on "
                                                rf"{socket.gethostname()}, since "):
        OutputLock(str(tmp_path)).acquire()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    OutputLock(str(tmp_path)).acquire().release()  # free again


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    pid = _dead_pid()
    _plant(tmp_path, pid=pid, run_id="old-job")
    warnings = []
    lock = OutputLock(str(tmp_path), run_id="new-job", warn=warnings.append).acquire()
    assert read_holder(lock.path).pid == os.getpid()
    assert len(warnings) == 1 and f"locked by pid {pid} on {socket.gethostname()}" in warnings[0]
    assert "no longer running; taking the lock over" in warnings[0]
    lock.release()


def test_torchrun_restart_takes_its_predecessors_lock_quietly(tmp_path):
    _plant(tmp_path, pid=_dead_pid(), run_id="job-1")
    warnings = []
    OutputLock(str(tmp_path), run_id="job-1", warn=warnings.append).acquire().release()
    assert warnings == []


def test_a_live_holder_with_the_same_run_id_is_still_refused(tmp_path):
    _plant(tmp_path, pid=os.getpid(), run_id="job-1")  # e.g. a second launch reusing --rdzv-id
    with pytest.raises(OutputLockedError):
        OutputLock(str(tmp_path), run_id="job-1").acquire()


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path):
    _plant(tmp_path, pid=os.getpid(), started=1.0)  # our pid, but a process that started at another time
    warnings = []
    OutputLock(str(tmp_path), warn=warnings.append).acquire().release()
    assert len(warnings) == 1


def test_lock_on_another_host(tmp_path):
    _plant(tmp_path, host="node-17", pid=4242, run_id="job-1")
    with pytest.raises(OutputLockedError, match=rf"pid 4242 on host node-17.*if that run is over, delete "
                                                rf"{tmp_path}/{LOCK_FILE}"):
        OutputLock(str(tmp_path), run_id="job-2").acquire()
    # global rank 0 of the same torchrun job, restarted on another node
    OutputLock(str(tmp_path), run_id="job-1").acquire().release()


def _settings(synth, out_dir, steps: int) -> list[str]:
    return torchrun_settings(synth, out_dir, **{"data.batch_size": 8, "optim.total_steps": steps,
                                                "optim.warmup_steps": 1, "optim.lr_milestones": f"[{steps - 1}]",
                                                "checkpoint.every": 0, "fusion.t2": 1.0})


@pytest.mark.slow
def test_two_trainers_on_one_output_dir(synth, tmp_path):
    out_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    train = [sys.executable, str(REPO / "fftrain" / "train.py")]
    first = subprocess.Popen(train + _settings(synth, out_dir, 10_000), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (out_dir / LOCK_FILE).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (out_dir / LOCK_FILE).exists(), "the first trainer never took the lock"
        second = subprocess.run(train + _settings(synth, out_dir, 10), cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"fftrain: error: {out_dir} is in use by another trainer (pid {first.pid} on {socket.gethostname()}, "
            f"since {read_holder(str(out_dir / LOCK_FILE)).since}); choose another output_dir or wait for that "
            "run to end"]
        assert first.poll() is None  # the first one trains on
    finally:
        first.kill()
        first.wait()
    # the first trainer died holding the lock: the next one takes it over with a warning and trains
    third = subprocess.run(train + _settings(synth, out_dir, 2), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"was locked by pid {first.pid}" in third.stderr and "taking the lock over" in third.stderr
    assert not (out_dir / LOCK_FILE).exists()
