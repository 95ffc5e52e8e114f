"""A Ctrl-C during an fftrain subcommand (here `fftrain plan` while it measures the backbone) ends it with one
line and exit 130, no traceback."""

import os
import signal
import subprocess
import sys

from repo_paths import REPO


def test_ctrl_c_of_a_subcommand_is_one_line():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # A test run started in a script's background inherits SIGINT ignored: give the command a terminal's default.
    proc = subprocess.Popen([sys.executable, "-m", "fftrain", "plan", "--classes", "29000000", "--gpus", "8",
                             "--gpu-memory", "32", "--max-classes"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()  # the plan says what it measures before it starts (a second or more)
        assert first.startswith("fftrain plan: measuring"), first
        proc.send_signal(signal.SIGINT)  # at once: the measurement is under way
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, first + err)
    lines = err.strip().splitlines()
    assert lines[-1] == "fftrain plan: interrupted; earlier outputs left as they were", first + err
    assert all(line.startswith("fftrain plan: ") for line in lines), first + err  # progress lines, no traceback
