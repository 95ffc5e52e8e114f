"""`fftrain train --nproc-per-node N`, the launcher, end to end on the tiny synthetic set: a refusal before
any worker starts, then a run through both phases under torchrun's elastic agent."""

import json
import os
import sys

import pytest

from repo_paths import REPO
from train_helpers import torchrun_settings
from watchdog import run_watched

pytestmark = pytest.mark.slow


def _command(synth, out_dir, *extra):
    sets = torchrun_settings(synth, out_dir, **{"optim.total_steps": 8, "optim.lr_milestones": "[6]"})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), FFTRAIN_STARTUP_TIMEOUT_S="120")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return [sys.executable, "-m", "fftrain", "train", "--nproc-per-node", "2", *sets, *extra], env


def _launch(synth, out_dir, *extra):
    command, env = _command(synth, out_dir, *extra)
    return run_watched(command, deadline_s=480, cwd=out_dir.parent, env=env)


def test_a_refusal_comes_before_any_worker(synth, tmp_path):
    out_dir = tmp_path / "run"
    proc = _launch(synth, out_dir, "--set", f"data.verification=[{tmp_path}/missing.bin]")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"fftrain: error: data.verification: file not found: "
                                                f"{tmp_path}/missing.bin"]
    assert not out_dir.exists()  # no worker started, nothing written


def test_trains_through_both_phases_under_the_elastic_agent(synth, tmp_path):
    out_dir = tmp_path / "run"
    proc = _launch(synth, out_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    assert {r.get("phase") for r in rows if "phase" in r} == {"dail", "agnostic"}
    assert sorted(os.listdir(out_dir / "checkpoints")) == ["step-00000004", "step-00000008"]
    assert "Traceback" not in proc.stderr


def test_ctrl_c_ends_the_job_with_one_line_and_it_resumes(synth, tmp_path):
    import signal
    import subprocess
    import time

    out_dir = tmp_path / "run"
    longer = ("--set", "optim.total_steps=60", "--set", "optim.lr_milestones=[50]", "--set", "checkpoint.every=2")
    command, env = _command(synth, out_dir, *longer)
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out_dir / "checkpoints").is_dir() or not any(
                name.startswith("step-") for name in os.listdir(out_dir / "checkpoints")):
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint before the deadline"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("fftrain:")] == [
        "fftrain: interrupted; the newest complete checkpoint is kept: run the same command again to resume "
        "(checkpoint.resume=auto)"]
    steps = sorted(name for name in os.listdir(out_dir / "checkpoints") if name.startswith("step-"))
    assert steps, "the checkpoint written before the Ctrl-C is kept"
    resumed = _launch(synth, out_dir, *longer)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from step {int(steps[-1].split('-')[1])}" in resumed.stdout + resumed.stderr, resumed.stdout[-3000:]
