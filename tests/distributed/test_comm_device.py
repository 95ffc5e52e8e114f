"""Every collective call site with a group treated as NCCL treats it: a tensor left on the host fails.

Gloo takes CPU tensors and world size 1 skips communication, so a host tensor handed to a collective
(the first multi-GPU run died on one at its first log step) passes every CPU test unless the group
refuses it. `HostTensorTracker.nccl_like` makes the gloo group refuse every tensor made without a
device, and the whole trainer (head, fusion, evaluation, checkpoints, log steps) runs under it.
"""

import pytest
import torch

from dist_harness import run_distributed
from fftrain.distributed import CommDeviceError, all_reduce_, check_comm_tensor, comm_device
from host_tensors import HostTensorTracker


def _host_tensor_refused(ctx):
    with HostTensorTracker() as tracker, tracker.nccl_like(ctx.group):
        placed = torch.tensor([1.0], device=comm_device(ctx.group, ctx.device))
        all_reduce_(placed, ctx.group)
        try:
            all_reduce_(torch.tensor([1.0]), ctx.group)   # the trainer's old data-wait tensor
        except CommDeviceError as e:
            return float(placed), str(e)
    return float(placed), None


def test_a_host_tensor_in_a_collective_fails_under_the_nccl_rule():
    for value, message in run_distributed(_host_tensor_refused, 2):
        assert value == 2.0
        assert message is not None and "all_reduce" in message and "made on the host" in message


def _gloo_refuses_device_tensors(ctx):
    try:
        check_comm_tensor(torch.zeros(2, device="meta"), ctx.group, "all_reduce")
    except CommDeviceError as e:
        return str(e)


def test_gloo_group_refuses_a_tensor_off_the_cpu():
    for message in run_distributed(_gloo_refuses_device_tensors, 2):
        assert "it is on meta; gloo needs CPU tensors" in message


def _train_under_nccl_rule(ctx, synth_dir, out_dir):
    from fftrain.config import load_config
    from fftrain.data import TrainingData
    from fftrain.demo import DEMO_CONFIG
    from fftrain.training.run_log import setup_logging
    from fftrain.training.trainer import Trainer

    overrides = {"output_dir": out_dir, "data.synth_dir": synth_dir, "data.synth_preset": "tiny",
                 "data.batch_size": 8, "data.num_workers": 1, "data.reader": "torch",
                 "data.verification": f"[{synth_dir}/verification.bin]", "optim.total_steps": 4,
                 "optim.warmup_steps": 1, "optim.lr_milestones": "[3]", "fusion.t2": 0.5, "fusion.t1": 0.82,
                 "fusion.backend": "torch",
                 "log.every": 1, "log.eval_every": 3, "checkpoint.every": 2, "log.tensorboard": "false",
                 "head.sample_rate": 0.5}
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()], base=DEMO_CONFIG)
    setup_logging(out_dir, ctx.rank)
    with HostTensorTracker() as tracker, tracker.nccl_like(ctx.group):
        data = TrainingData.from_config(cfg, ctx, f"{synth_dir}/manifest.json")
        trainer = Trainer(cfg, ctx, data)
        results = trainer.train()
        resumed = Trainer(cfg, ctx, data)   # loads the final checkpoint (resharded FC, broadcast path)
        resumed.loader.close()
    return trainer.state.step, trainer.state.fused, sorted(results), resumed.state.step


@pytest.mark.slow
def test_trainer_head_fusion_eval_and_checkpoint_send_no_host_tensor(synth, tmp_path):
    results = run_distributed(_train_under_nccl_rule, 2, args=(str(synth), str(tmp_path / "run")))
    for step, fused, evaluated, resumed_step in results:
        assert (step, fused, resumed_step) == (4, True, 4)
        assert evaluated == ["verification"]
