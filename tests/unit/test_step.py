"""fftrain.training.step: one call of the training step (no loop), its settings, the finiteness watch, and the
fusion swap and fusion's plan on one process."""

import dataclasses

import pytest
import torch
from torch import nn

from fftrain.config import FusionConfig, config_from_dict
from fftrain.data.label_space import LabelSpace
from fftrain.fusion import apply_fusion, plan_fusion, run_fusion
from fftrain.model.embedding import EmbeddingModel
from fftrain.model.grl import DatasetClassifier
from fftrain.training.step import (NonFiniteWatch, PhaseBoundary, StepBatch, build_head, build_optimizer,
                                   step_settings, swap_in_fusion, train_step)

DIM, DATASETS, CLASSES, BATCH = 8, 2, 6, 12


def _cfg(**optim):
    return config_from_dict({"model": {"embedding_size": DIM}, "head": {"scale": 16.0, "m": 0.2},
                             "grl": {"weight": 0.5, "start_step": 3, "hidden": 4},
                             "optim": {"lr": 0.1, "total_steps": 10, "lr_milestones": [6], "warmup_steps": 2,
                                       **optim}})


def _parts(cfg, seed=0):
    torch.manual_seed(seed)
    model = EmbeddingModel.from_parts(nn.Sequential(nn.Linear(5, DIM)),
                                      DatasetClassifier(DIM, DATASETS, hidden=cfg.grl.hidden, lam=cfg.grl.weight))
    head = build_head(cfg, CLASSES, group=None, device="cpu", compute_dtype=torch.float32)
    return model, head, build_optimizer(model, cfg)


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    fused = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return StepBatch(torch.randn(BATCH, 5, generator=g), fused, fused % DATASETS)


def test_step_settings_follow_the_config():
    cfg = _cfg(grad_clip=2.5)
    first, later = step_settings(cfg, 0), step_settings(cfg, 7)
    assert (first.lr, first.dom_weight, first.grad_clip) == (pytest.approx(0.05), 0.0, 2.5)  # warm-up, GRL not on
    assert (later.lr, later.dom_weight) == (pytest.approx(0.01), 1.0)  # past the milestone, GRL on


def test_one_step_matches_the_written_out_step():
    cfg = _cfg(grad_clip=0.05)  # small enough to clip
    model, head, optimizer = _parts(cfg)
    batch = _batch()
    settings = step_settings(cfg, 4)
    out = train_step(model, head, optimizer, batch, settings, class_dataset=None, watch=NonFiniteWatch("cpu"), step=4)

    ref_model, ref_head, ref_optimizer = _parts(cfg)
    embeddings, logits = ref_model(batch.images)
    loss_cls = ref_head(embeddings, batch.fused, batch.dataset)
    loss_dom = nn.functional.cross_entropy(logits, batch.dataset)
    (loss_cls + loss_dom).backward()
    torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.05)
    for group in ref_optimizer.param_groups:
        group["lr"] = settings.lr
    ref_optimizer.step()
    ref_head.step(settings.lr)

    assert out["loss_cls"].item() == loss_cls.item() and out["loss_dom"].item() == loss_dom.item()
    assert not out["loss_cls"].requires_grad and out["lr"] == settings.lr
    for got, want in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(head.weight, ref_head.weight, rtol=0, atol=0)


def test_the_dataset_aware_phase_changes_the_loss_and_the_grl_weight_reaches_the_backbone_only_when_on():
    cfg = _cfg(grad_clip=0.0)
    losses, backbones = {}, {}
    for name, step, class_dataset in (("aware_off", 0, torch.arange(CLASSES) % DATASETS), ("agnostic_off", 0, None),
                                      ("agnostic_on", 3, None)):
        model, head, optimizer = _parts(cfg)
        settings = dataclasses.replace(step_settings(cfg, step), lr=0.1)
        out = train_step(model, head, optimizer, _batch(), settings, class_dataset=class_dataset,
                         watch=NonFiniteWatch("cpu"), step=step)
        losses[name], backbones[name] = out["loss_cls"].item(), model.backbone[0].weight.detach().clone()
    assert losses["aware_off"] < losses["agnostic_off"]  # a softmax over one dataset's classes only
    assert losses["agnostic_on"] == losses["agnostic_off"]  # the GRL weight changes the gradient, not the loss
    assert not torch.equal(backbones["agnostic_on"], backbones["agnostic_off"])


def test_the_watch_keeps_the_first_non_finite_step():
    watch = NonFiniteWatch("cpu")
    watch.note(2, torch.tensor(1.0), torch.tensor(0.5))
    assert watch.first_bad(None) is None
    watch.note(7, torch.tensor(1.0), torch.tensor(float("nan")))
    watch.note(9, torch.tensor(float("inf")), torch.tensor(0.5))
    assert watch.first_bad(None) == 7


def test_a_non_finite_loss_is_noted_not_raised_by_the_step():
    cfg = _cfg()
    model, head, optimizer = _parts(cfg)
    batch = _batch()
    batch.images[0, 0] = float("nan")
    watch = NonFiniteWatch("cpu")
    train_step(model, head, optimizer, batch, step_settings(cfg, 5), class_dataset=None, watch=watch, step=5)
    assert watch.first_bad(None) == 5


def _planted_head(cfg):
    """Six classes of two datasets; class 4 (dataset 0) is class 1 (dataset 1) again."""
    head = build_head(cfg, CLASSES, group=None, device="cpu", compute_dtype=torch.float32)
    weight = torch.nn.functional.normalize(torch.eye(CLASSES, DIM), dim=1)
    weight[4] = weight[1] + 0.01
    momentum = torch.arange(CLASSES * DIM, dtype=torch.float32).reshape(CLASSES, DIM)
    head.reset_classes(CLASSES, weight, momentum)
    return head, weight, momentum


def test_the_fusion_swap_merges_the_head_and_the_label_space_together():
    cfg = _cfg()
    head, _, momentum = _planted_head(cfg)
    space = LabelSpace([0, 1, 0, 1, 0, 1])
    result = swap_in_fusion(head, space, FusionConfig(t1=0.9, backend="torch"), group=None)
    assert result.num_classes_new == head.num_classes == space.num_fused_classes == CLASSES - 1
    assert space.label_map.tolist() == [0, 1, 2, 3, 1, 4]
    assert space.fused_dataset.tolist() == [0, 1, 0, 1, 1]  # the dataset of the smallest source class
    torch.testing.assert_close(head.momentum_buffer[1], (momentum[1] + momentum[4]) / 2)


def test_the_plan_changes_nothing_and_is_what_the_fusion_applies():
    head, weight, momentum = _planted_head(_cfg())
    config = FusionConfig(t1=0.9, backend="torch", allow_same_dataset=True)
    before = head.weight.detach().clone()
    planned = plan_fusion(head.weight.data, class_dataset=torch.tensor([0, 1, 0, 1, 0, 1]), label_map=None,
                          config=config)
    assert torch.equal(head.weight, before) and planned.old_to_new.tolist() == [0, 1, 2, 3, 1, 4]
    new_weight, _ = apply_fusion(planned, weight, [momentum])
    whole = run_fusion(weight, [momentum], class_dataset=torch.tensor([0, 1, 0, 1, 0, 1]), label_map=None,
                       source_info=None, config=config)
    assert torch.equal(new_weight, whole.new_local_weight)


def test_allow_same_dataset_is_read_from_the_config():
    head, weight, _ = _planted_head(_cfg())
    same_dataset = torch.tensor([0, 1, 0, 1, 1, 0])  # classes 1 and 4 now both in dataset 1
    cross = plan_fusion(weight, class_dataset=same_dataset, label_map=None, config=FusionConfig(t1=0.9))
    every = plan_fusion(weight, class_dataset=same_dataset, label_map=None,
                        config=FusionConfig(t1=0.9, allow_same_dataset=True))
    assert cross.plan.num_classes_new == CLASSES and every.plan.num_classes_new == CLASSES - 1


def _boundary_cfg(method="facefusion", **fusion):
    return dataclasses.replace(_cfg(), method=method, fusion=FusionConfig(backend="torch", **{"t2": 0.5, **fusion}))


def test_the_phase_boundary_at_a_fixed_t2_merges_there():
    cfg = _boundary_cfg(t1=0.9)
    head, _, _ = _planted_head(cfg)
    space = LabelSpace([0, 1, 0, 1, 0, 1])
    boundary = PhaseBoundary(cfg)
    assert not boundary.watches_alignment
    assert [boundary.due(head, space, step, group=None) for step in (0, 4, 5)] == [False, False, True]
    fused, result = boundary.cross(head, space, group=None)
    assert fused and result.num_classes_new == head.num_classes == CLASSES - 1 and boundary.last_check is None


def test_naive_switches_without_merging_and_dail_never_reaches_a_boundary():
    head, weight, _ = _planted_head(_cfg())
    space = LabelSpace([0, 1, 0, 1, 0, 1])
    assert PhaseBoundary(_boundary_cfg("naive")).cross(head, space, group=None) == (True, None)
    assert torch.equal(head.weight, weight) and space.num_fused_classes == CLASSES
    dail = PhaseBoundary(_boundary_cfg("dail"))
    assert not any(dail.due(head, space, step, group=None) for step in range(10))


@pytest.mark.parametrize("no_valley,agnostic", [("aware", False), ("agnostic", True)])
def test_without_a_valley_nothing_merges_and_no_valley_says_where_training_goes(no_valley, agnostic):
    """Six proxies are too few for the two-mode fit: t1 'auto' refuses; 'aware' declines for the rest of the
    run (no later boundary), 'agnostic' crosses unmerged."""
    cfg = _boundary_cfg(t1="auto", no_valley=no_valley)
    head, weight, _ = _planted_head(cfg)
    space = LabelSpace([0, 1, 0, 1, 0, 1])
    boundary = PhaseBoundary(cfg)
    fused, result = boundary.cross(head, space, group=None)
    assert fused is agnostic and boundary.declined is not agnostic and not result.threshold.merges
    assert head.num_classes == space.num_fused_classes == CLASSES and torch.equal(head.weight, weight)
    assert boundary.due(head, space, 9, group=None) is agnostic  # declined: never due again


def test_an_auto_t2_checks_readiness_only_at_its_steps():
    """fusion.t2 'auto' with floor 0.2, ceiling 0.6, a check every 2 steps (of 10): checks at 2, 4 and the
    ceiling 6, each one's verdict in last_check; the ceiling is due whatever the geometry."""
    cfg = _boundary_cfg(t1="auto", t2="auto", t2_floor=0.2, t2_ceiling=0.6, readiness_every=2)
    head, _, _ = _planted_head(cfg)
    head.track_alignment = True
    space = LabelSpace([0, 1, 0, 1, 0, 1])
    boundary = PhaseBoundary(cfg)
    assert boundary.watches_alignment
    seen = {}
    for step in range(7):
        due = boundary.due(head, space, step, group=None)
        seen[step] = (due, boundary.last_check and boundary.last_check.step)
    assert seen == {0: (False, None), 1: (False, None), 2: (False, 2), 3: (False, None), 4: (False, 4),
                    5: (False, None), 6: (True, 6)}
    assert "ceiling step 6 reached" in boundary.last_check.reason
