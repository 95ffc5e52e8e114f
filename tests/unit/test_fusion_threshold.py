"""T1 and T2 'auto' (fftrain.fusion.threshold, fftrain.fusion.readiness) on synthetic top-1 cosines, and the
reciprocal-NN candidate pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fftrain.config import ConfigError, FusionConfig, load_config
from fftrain.fusion.components import mutual_pairs, top1_edges
from fftrain.fusion.readiness import ReadinessWatch
from fftrain.fusion.threshold import choose_t1

AUTO = FusionConfig(t1="auto")


def two_modes(rng, low=0.45, high=0.88, n_low=3000, n_high=200, spread=0.04):
    return np.concatenate([rng.normal(low, spread, n_low), rng.normal(high, spread, n_high)])


def test_fixed_t1_is_the_configured_number():
    decision = choose_t1(None, FusionConfig(t1=0.7))
    assert decision.mode == "fixed" and decision.t1 == 0.7 and decision.merges and decision.precision is None


def test_auto_t1_is_the_valley_between_separated_modes():
    decision = choose_t1(two_modes(np.random.default_rng(0)), AUTO)
    assert decision.mode == "valley" and decision.merges
    assert 0.55 < decision.t1 < 0.8 and decision.t1 == decision.valley
    assert decision.precision > 0.99 and decision.recall > 0.99
    assert "precision" in decision.line() and decision.to_dict()["modes"]["separated"]


def test_auto_t1_is_bounded_by_the_configured_limits():
    scores = two_modes(np.random.default_rng(1))
    decision = choose_t1(scores, FusionConfig(t1="auto", t1_min=0.75, t1_max=0.9))
    assert decision.t1 == 0.75 and "bounded to [0.75, 0.9]" in decision.reason
    precision, recall = decision.precision, decision.recall
    assert 0 < recall <= 1 and 0 < precision <= 1


@pytest.mark.parametrize("scores", [np.random.default_rng(2).normal(0.45, 0.05, 3000),
                                    two_modes(np.random.default_rng(3), low=0.5, high=0.6, spread=0.06)],
                         ids=["one_mode", "overlapping"])
def test_no_valley_refuses_to_merge_and_says_why(scores):
    decision = choose_t1(scores, AUTO)
    assert not decision.merges and decision.t1 == float("inf")
    assert "Ashman's D" in decision.reason and decision.to_dict()["t1"] is None
    assert decision.line().startswith("T1 auto: no merge")


def test_too_few_scores_refuse():
    decision = choose_t1(np.array([0.3, 0.9, np.nan]), AUTO)
    assert not decision.merges and "2 top-1 cosines" in decision.reason


def test_min_separation_is_the_overlap_bound():
    scores = two_modes(np.random.default_rng(4), low=0.45, high=0.7, spread=0.05)
    loose, strict = choose_t1(scores, FusionConfig(t1="auto", min_separation=2.0)), \
        choose_t1(scores, FusionConfig(t1="auto", min_separation=50.0))
    assert loose.merges and not strict.merges


@pytest.mark.parametrize("override, key", [("fusion.t1=high", "fusion.t1"), ("fusion.t1=0", "fusion.t1"),
                                           ("fusion.t1_min=0.9", "fusion.t1_min"),
                                           ("fusion.no_valley=merge", "fusion.no_valley"),
                                           ("fusion.min_separation=0", "fusion.min_separation")])
def test_bad_auto_settings_fail_at_start_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override, "fusion.t1_max=0.8"] if "t1_min" in override else [override])


def test_auto_and_numbers_load():
    assert load_config(None, ["fusion.t1=auto"]).fusion.t1_auto
    assert load_config(None, ["fusion.t1=0.65"]).fusion.t1 == 0.65
    assert load_config(None).fusion.t1 == 0.7 and not load_config(None).fusion.mutual_nn


def test_mutual_nn_keeps_only_reciprocal_top1_pairs():
    # a look-alike chain across two datasets: 0 (ds 0) - 1 (ds 1) - 2 (ds 0); 1's top-1 is 0, 2's is 1
    table = [0, 1, 0]
    sims = torch.tensor([[0.9, 0.2], [0.9, 0.8], [0.8, 0.3]])
    ids = torch.tensor([[1, 2], [0, 2], [1, 0]])
    edges = top1_edges(sims, ids, 0, table, 0.7)
    assert sorted(map(tuple, edges.tolist())) == [(0, 1), (1, 0), (2, 1)]
    pairs, cos = mutual_pairs(edges, np.array([[0, 1], [1, 2]]), np.array([0.9, 0.8], np.float32))
    assert pairs.tolist() == [[0, 1]] and cos.tolist() == pytest.approx([0.9])
    assert top1_edges(sims, ids, 0, table, 0.95).shape == (0, 2)  # below t1: no edge


def watch():
    return ReadinessWatch(floor_step=100, ceiling_step=500, every=50, plateau=0.01)


def test_readiness_checks_from_the_floor_every_interval_and_at_the_ceiling():
    w = watch()
    assert [s for s in range(0, 600, 25) if w.due(s)] == [100, 150, 200, 250, 300, 350, 400, 450] + \
        list(range(500, 600, 25))


def test_ready_when_alignment_plateaus_and_the_histogram_has_a_valley():
    rng = np.random.default_rng(5)
    valley, flat = choose_t1(two_modes(rng), AUTO), choose_t1(rng.normal(0.45, 0.05, 3000), AUTO)
    w = watch()
    first = w.observe(100, 0.60, valley)
    assert not first.ready and "not yet plateaued" in first.reason  # one reading: no plateau yet
    rising = w.observe(150, 0.70, valley)
    assert not rising.ready and "+0.100" in rising.reason
    no_valley = w.observe(200, 0.705, flat)
    assert not no_valley.ready and "plateaued" in no_valley.reason and "no valley" in no_valley.reason
    ready = w.observe(250, 0.708, valley)
    assert ready.ready and "two modes with a valley" in ready.reason and ready.to_dict()["valley"]


def test_the_ceiling_fuses_whatever_the_geometry():
    w = watch()
    w.observe(450, 0.5, choose_t1(np.random.default_rng(6).normal(0.45, 0.05, 3000), AUTO))
    check = w.observe(500, 0.7, choose_t1(np.random.default_rng(7).normal(0.45, 0.05, 3000), AUTO))
    assert check.ready and check.reason.startswith("ceiling step 500 reached") and "no valley" in check.reason


def test_t2_auto_config():
    cfg = load_config(None, ["fusion.t2=auto", "optim.total_steps=1000", "optim.lr_milestones=[800]"])
    assert cfg.fusion.t2_auto and (cfg.t2_floor_step, cfg.t2_step) == (100, 500)
    fixed = load_config(None, ["optim.total_steps=1000", "optim.lr_milestones=[800]"])
    assert fixed.t2_floor_step == fixed.t2_step == 210
    for override, key in (("fusion.t2_floor=0.6", "fusion.t2_floor"), ("fusion.t2=soon", "fusion.t2"),
                          ("fusion.readiness_every=0", "fusion.readiness_every")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="method 'naive' never merges"):
        load_config(None, ["fusion.t2=auto", "method=naive"])
