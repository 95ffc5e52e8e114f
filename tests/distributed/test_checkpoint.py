"""Checkpoint folders: complete or absent, resharded on load, nothing unpickled."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dist_harness import run_distributed
from fftrain.training.checkpoint import (CheckpointError, check_compatible, complete_checkpoints, latest_checkpoint,
                                         load_checkpoint, load_partial, load_weights_file)
from fftrain.distributed.class_sharding import shard_range
from fftrain.distributed import single_process_context
from checkpoint_helpers import DIM, NUM_CLASSES, full, rows, save
from repo_paths import TESTS


def _load(ctx, path):
    replicated = {"model": {"w": torch.zeros(2)}, "label_map": torch.zeros(NUM_CLASSES, dtype=torch.long)}
    sharded = {"fc_weight": rows(ctx, torch.zeros(NUM_CLASSES, DIM)),
               "fc_momentum": rows(ctx, torch.zeros(NUM_CLASSES, DIM))}
    rank_state = load_checkpoint(path, ctx=ctx, replicated=replicated, sharded=sharded)
    return replicated["model"]["w"], sharded["fc_weight"].local, sharded["fc_momentum"].local, sorted(rank_state)


def _save_then_load(ctx, root):
    for step in (1, 2, 3):
        path = save(ctx, root, step)
    return path, _load(ctx, path)


@pytest.mark.slow
def test_save_on_four_ranks_load_on_two_and_one(tmp_path):
    root = str(tmp_path / "ck")
    saved = run_distributed(_save_then_load, 4, (root,))
    path = saved[0][0]
    for rank, (_, (w, fc, mom, rank_keys)) in enumerate(saved):
        start, end = shard_range(NUM_CLASSES, rank, 4)
        assert torch.equal(fc, full(3)[start:end]) and torch.equal(mom, -full(3)[start:end])
        assert rank_keys == ["torch_rng"]
    assert [s for s, _ in complete_checkpoints(root)] == [2, 3]  # keep_last=2
    for rank, (w, fc, mom, rank_keys) in enumerate(run_distributed(_load, 2, (path,))):
        start, end = shard_range(NUM_CLASSES, rank, 2)
        assert torch.equal(fc, full(3)[start:end]) and torch.equal(mom, -full(3)[start:end])
        assert torch.equal(w, torch.full((2,), 3.0))
        assert rank_keys == []  # RNG states are per rank: not restored on another world size
    w, fc, mom, _ = _load(single_process_context(), path)
    assert torch.equal(fc, full(3)) and torch.equal(mom, -full(3))


_SAVE_FOREVER = """
import sys, torch
sys.path[:0] = [{tests!r}]
from checkpoint_helpers import save
from fftrain.distributed import single_process_context
ctx = single_process_context()
step = 1
while True:
    save(ctx, {root!r}, step)
    step += 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.9, 1.7, 2.3, 3.1])
def test_kill_during_save_leaves_only_complete_checkpoints(tmp_path, delay):
    root = str(tmp_path / "ck")
    script = _SAVE_FOREVER.format(tests=str(TESTS), root=root)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not complete_checkpoints(root) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = complete_checkpoints(root)
    assert found, "no checkpoint completed before the kill"
    for step, path in found:
        _, fc, mom, _ = _load(single_process_context(), path)
        assert torch.equal(fc, full(step)) and torch.equal(mom, -full(step))
    assert latest_checkpoint(root) == found[-1][1]
    save(single_process_context(), root, 999)  # the next save clears any half-written folder
    assert not [name for name in os.listdir(root) if name.startswith(".")]


def test_incompatible_checkpoint_is_refused_with_the_mismatch_named():
    with pytest.raises(CheckpointError, match=r"ck: checkpoint has backbone='iresnet50' but this run has "
                                              r"backbone='iresnet18'"):
        check_compatible({"backbone": "iresnet50"}, {"backbone": "iresnet18"}, "ck")


def test_incomplete_folder_is_not_a_checkpoint(tmp_path):
    (tmp_path / "step-00000005").mkdir()
    assert complete_checkpoints(str(tmp_path)) == []
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_partial(str(tmp_path / "step-00000005"), {})


class _Payload:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/fftrain-should-not-exist",))


def test_weights_files_never_execute_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth: cannot be loaded as plain weights"):
        load_weights_file(str(path))
    assert not os.path.exists("/tmp/fftrain-should-not-exist")
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pth")
    assert torch.equal(load_weights_file(str(tmp_path / "ok.pth"))["w"], torch.ones(2))
