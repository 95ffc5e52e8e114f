"""Running the trainer in tests, on the tiny synthetic set (the `synth` fixture of tests/conftest.py):
`fftrain train` in this process (start-up checks) or under torchrun (end to end).

    code, err_lines, out = run_main(capsys, settings(synth, tmp_path / "run", seed=1))        # in this process
    proc = train(synth, tmp_path, nproc=2, optim__total_steps=8)       # torchrun fftrain/train.py
    steps = metrics(tmp_path)                                          # {step: metrics.jsonl row}
"""

from __future__ import annotations

import json
import os
import sys

from repo_paths import REPO
from watchdog import run_watched

TRAIN = str(REPO / "fftrain" / "train.py")


def settings(synth, out_dir, **extra) -> list[str]:
    """`--set` arguments of a 10-step run on `synth`; `extra` keys are dotted, or `__` for the dot. T1 and T2
    fixed (the demo's are 'auto'): a test of 'auto' says so."""
    values = {"output_dir": str(out_dir), "data.synth_dir": str(synth), "data.synth_preset": "tiny",
              "fusion.t1": 0.82, "fusion.t2": 0.5,
              "data.batch_size": 16, "data.num_workers": 1, "optim.total_steps": 10, "optim.warmup_steps": 2,
              "optim.lr_milestones": "[8]", "log.every": 1, "checkpoint.every": 4, "log.tensorboard": "false"}
    values.update({key.replace("__", "."): value for key, value in extra.items()})
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def run_main(capsys, argv) -> tuple[int, list[str], str]:
    """Exit code, stderr lines and stdout of `fftrain train ARGV...` run in this process."""
    from fftrain.commands.train import main as train_main

    capsys.readouterr()
    code = train_main(argv)
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def torchrun_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", FFTRAIN_STARTUP_TIMEOUT_S="120")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def torchrun_settings(synth, out_dir, **extra) -> list[str]:
    """`settings`, verifying on the set's pairs and fusing at half time."""
    return settings(synth, out_dir, **{"data.verification": f"[{synth}/verification.bin]", "fusion.t2": 0.5, **extra})


def train(synth, out_dir, nproc=1, extra_args=(), max_restarts=0, check=True, **overrides):
    """torchrun fftrain/train.py with `torchrun_settings`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={max_restarts}", TRAIN, *torchrun_settings(synth, out_dir, **overrides), *extra_args]
    proc = run_watched(cmd, deadline_s=480, cwd=REPO, env=torchrun_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def metrics(out_dir) -> dict[int, dict]:
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    return {r["step"]: r for r in rows if "loss/cls" in r}
