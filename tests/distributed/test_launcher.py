"""The launcher (`fftrain train --nproc-per-node N`): workers under torchrun's elastic agent; a worker's
user error (exit 2) is not restarted and ends the job with exit 2 and no ChildFailedError report, a crash
is restarted, a Ctrl-C ends the job with one line."""

import os
import signal
import subprocess
import sys
import time

import pytest

from repo_paths import REPO

WORKER = """
import os, sys, time
with open(os.environ["LOG"], "a") as f:
    f.write(os.environ["RANK"] + "\\n")
if os.environ["MODE"] == "sleep":
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        sys.exit(130)
sys.exit(int(os.environ["MODE"]))
"""

LAUNCH = ("import sys; from fftrain.distributed.launcher import launch_workers; "
          "sys.exit(launch_workers([sys.argv[1]], nproc_per_node=2, max_restarts=2))")


def _start(tmp_path, mode):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOG": str(tmp_path / "starts.txt"), "MODE": mode}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, str(script)], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _starts(tmp_path):
    return (tmp_path / "starts.txt").read_text().split()


def test_a_user_error_is_not_restarted_and_ends_with_exit_2_quietly(tmp_path):
    proc = _start(tmp_path, "2")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 2
    assert sorted(_starts(tmp_path)) == ["0", "1"]  # one round, no restart
    assert "ChildFailedError" not in err and "Traceback" not in err, err


def test_a_crash_is_restarted_up_to_max_restarts_and_ends_with_one_line(tmp_path):
    proc = _start(tmp_path, "1")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1
    assert len(_starts(tmp_path)) == 2 * 3  # the first round and two restarts
    assert "ChildFailedError" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("fftrain: workers failed (rank 0 exited 1, rank 1 exited 1)")


def test_ctrl_c_ends_the_job_with_one_line(tmp_path):
    proc = _start(tmp_path, "sleep")
    deadline = time.monotonic() + 120
    while not ((tmp_path / "starts.txt").exists() and len(_starts(tmp_path)) == 2):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("fftrain:")] == [
        "fftrain: interrupted; the newest complete checkpoint is kept: run the same command again to resume "
        "(checkpoint.resume=auto)"]
