"""A steady-state training step (forward, backward, both optimiser steps) never waits on the host, in
both phases: the ops that would sync a CUDA stream are counted on the CPU (tests/host_syncs.py), and on a
GPU the same step also runs under torch.cuda.set_sync_debug_mode("error")."""

import contextlib

import pytest
import torch

from fftrain.config import load_config
from fftrain.data import TrainingData
from fftrain.distributed import single_process_context
from fftrain.demo import DEMO_CONFIG
from fftrain.training.run_log import setup_logging
from fftrain.training.trainer import Trainer
from host_syncs import HostSyncCounter


def make_trainer(synth, out_dir, device="cpu", **overrides) -> Trainer:
    values = {"output_dir": str(out_dir), "data.manifest": str(synth / "manifest.json"), "data.batch_size": 8,
              "data.num_workers": 1, "data.reader": "torch", "optim.total_steps": 20, "optim.warmup_steps": 1,
              "optim.lr_milestones": "[15]", "log.every": 1000, "checkpoint.every": 0, "log.tensorboard": "false",
              "device": device, "fusion.t2": 0.5, "fusion.t1": 0.82, **overrides}
    cfg = load_config(None, [f"{k}={v}" for k, v in values.items()], base=DEMO_CONFIG)
    ctx = single_process_context(torch.device("cuda", 0) if device == "cuda" else device)
    setup_logging(cfg.output_dir, ctx.rank)
    return Trainer(cfg, ctx, TrainingData.from_config(cfg, ctx, cfg.data.manifest))


@contextlib.contextmanager
def cuda_syncs_raise(device: torch.device):
    """On CUDA, any stream sync inside raises (set_sync_debug_mode("error")); elsewhere nothing."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def syncs_of_a_steady_step(trainer: Trainer, batches) -> HostSyncCounter:
    for _ in range(2):  # the first steps build what is kept (generators, the deferred record)
        trainer.train_step(next(batches))
    batch = next(batches)
    with HostSyncCounter() as syncs, cuda_syncs_raise(trainer.ctx.device):
        trainer.train_step(batch)
    return syncs


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overrides", [
    {"head.sample_rate": 1.0},
    {"head.sample_rate": 0.5, "optim.grad_clip": 5.0},   # sampling: the positives fit in the sample, no count
], ids=["all_classes", "sampled_clipped"])
def test_a_steady_training_step_has_no_host_sync_in_either_phase(synth, tmp_path, overrides, device):
    trainer = make_trainer(synth, tmp_path, device, **overrides)
    assert round(trainer.head.sample_rate * trainer.head.local_classes) >= trainer.cfg.data.batch_size
    batches = iter(trainer.loader)
    try:
        dail = syncs_of_a_steady_step(trainer, batches)
        trainer.check_deferred()
        trainer.on_phase_boundary()
        assert trainer.phase == "agnostic"
        agnostic = syncs_of_a_steady_step(trainer, batches)
    finally:
        trainer.loader.close()
    assert dail.events == [], "dataset-aware step: " + dail.describe()
    assert agnostic.events == [], "dataset-agnostic step: " + agnostic.describe()


def test_the_counter_sees_the_deferred_label_check_as_it_was():
    """The counter is not blind to the syncs this test is about: a 0-d index into a device tensor."""
    labels, bad = torch.tensor([3, 7, 9]), torch.tensor([False, True, False])
    with HostSyncCounter() as syncs:
        i = bad.to(torch.uint8).argmax()
        labels[i]
        labels.gather(0, i.unsqueeze(0))
    assert [op for op, _ in syncs.events] == ["aten._local_scalar_dense.default"]
