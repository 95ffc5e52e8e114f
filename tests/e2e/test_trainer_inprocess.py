"""The training loop in this process (one rank, no torchrun): phases, fusion, checkpoints, resume."""

import json

import pytest

from fftrain.training.checkpoint import complete_checkpoints, read_meta
from fftrain.config import load_config
from fftrain.data import TrainingData
from fftrain.demo import DEMO_CONFIG
from fftrain.distributed import single_process_context
from fftrain.training.run_log import setup_logging
from fftrain.training.trainer import Trainer


def make_trainer(synth, out_dir, **overrides) -> Trainer:
    values = {"output_dir": str(out_dir), "data.manifest": str(synth / "manifest.json"), "data.batch_size": 16,
              "data.num_workers": 1, "data.reader": "torch", "optim.total_steps": 6, "optim.warmup_steps": 1,
              "optim.lr_milestones": "[5]", "fusion.t2": 0.5, "fusion.t1": 0.82, "log.every": 1, "checkpoint.every": 2,
              "log.tensorboard": "false", "device": "cpu", **overrides}
    cfg = load_config(None, [f"{k}={v}" for k, v in values.items()], base=DEMO_CONFIG)
    ctx = single_process_context()
    setup_logging(cfg.output_dir, ctx.rank)
    return Trainer(cfg, ctx, TrainingData.from_config(cfg, ctx, cfg.data.manifest))


def losses(out_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    return {r["step"]: r["loss/cls"] for r in rows if "loss/cls" in r}


def test_a_run_goes_through_both_phases_and_checkpoints(synth, tmp_path):
    trainer = make_trainer(synth, tmp_path)
    trainer.train()
    assert trainer.state.step == 6 and trainer.state.fused and trainer.phase == "agnostic"
    assert trainer.head.num_classes <= trainer.data.num_source_classes
    steps = [step for step, _ in complete_checkpoints(str(tmp_path / "checkpoints"))]
    assert steps[-1] == 6
    assert read_meta(str(tmp_path / "checkpoints" / "step-00000006"))["fused"]
    assert sorted(losses(tmp_path)) == list(range(1, 7))


def test_resume_in_process_continues_with_the_same_losses(synth, tmp_path):
    make_trainer(synth, tmp_path / "straight").train()
    make_trainer(synth, tmp_path / "stopped", stop_at_step=2).train()
    resumed = make_trainer(synth, tmp_path / "stopped")
    assert resumed.state.step == 2 and not resumed.state.fused
    resumed.train()
    straight, stopped = losses(tmp_path / "straight"), losses(tmp_path / "stopped")
    assert stopped == pytest.approx(straight, rel=1e-5)


def test_the_pretrained_backbone_resolved_at_start_up_is_the_trainers_and_a_resume_ignores_it(synth, tmp_path):
    import torch

    from fftrain.model.backbones import build_backbone

    torch.manual_seed(123)
    weights = build_backbone("iresnet_tiny", embedding_size=128).state_dict()
    path = tmp_path / "backbone.pth"
    torch.save(weights, path)
    trainer = make_trainer(synth, tmp_path / "run", **{"model.pretrained": str(path), "stop_at_step": 2})
    for name, value in trainer.model.backbone.state_dict().items():
        assert torch.equal(value, weights[name]), name
    trainer.train()
    resumed = make_trainer(synth, tmp_path / "run", **{"model.pretrained": str(path)})
    assert resumed.state.step == 2
    stem = next(name for name in weights if name.endswith("weight") and weights[name].dim() == 4)
    assert not torch.equal(resumed.model.backbone.state_dict()[stem], weights[stem])  # the checkpoint's, trained
