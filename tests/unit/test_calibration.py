"""fftrain.calibration: thresholds at a FAR / FRR from score samples, and the two-mode fit."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy import stats

from fftrain.calibration.evt import FitError
from fftrain.calibration.modes import fit_two_modes
from fftrain.calibration.noise import fit_label_noise
from fftrain.calibration.tails import fit_body_tail
from fftrain.calibration.thresholds import (AUTO, far_at, frr_at, lower_threshold, parse_rate, parse_threshold, tar_at,
                                            threshold_at_far, threshold_at_frr, upper_threshold)
from fftrain.errors import UserError


def test_far_and_tar_count_the_scores_strictly_above():
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    assert far_at(scores, 0.3) == 0.25 and far_at(scores, 0.05) == 1.0 and far_at(scores, 0.4) == 0.0
    assert tar_at(scores, 0.25) == 0.5
    assert frr_at(scores, 0.3) == 0.5 and frr_at(scores, 0.1) == 0.0


@pytest.mark.parametrize("far", [1e-1, 1e-2, 1e-3])
def test_threshold_at_far_meets_the_rate_and_is_the_smallest_such_sample(far):
    scores = np.random.default_rng(0).normal(size=20000)
    t, resolved = threshold_at_far(scores, far)
    assert resolved and far_at(scores, t) <= far
    below = np.sort(scores)[np.sort(scores) < t]
    assert far_at(scores, below[-1]) > far  # the next smaller sample value lets too many through
    assert abs(t - stats.norm.isf(far)) < 0.1  # and it estimates the distribution's quantile


def test_a_rate_below_the_sample_resolution_takes_the_largest_score():
    scores = np.arange(100, dtype=float)
    assert threshold_at_far(scores, 1e-4) == (99.0, False)
    choice = upper_threshold("x", AUTO, scores, far=1e-4, paper=None, statistic="s")
    assert choice.value == 99.0 and not choice.resolved and "resolves only 1/100" in choice.how


def test_threshold_at_frr_leaves_at_most_the_rate_below():
    scores = np.random.default_rng(1).normal(size=5000)
    t = threshold_at_frr(scores, 0.01)
    assert frr_at(scores, t) <= 0.01 < frr_at(scores, np.sort(scores)[np.sort(scores) > t][0])


def test_auto_never_goes_below_the_paper_and_reports_both_rates():
    impostor = np.random.default_rng(2).normal(0.1, 0.1, 100000)
    weak = upper_threshold("leak", AUTO, impostor, far=1e-4, paper=0.3, statistic="s")
    assert weak.value > 0.3 and weak.far <= 1e-4 and weak.paper_far == pytest.approx(far_at(impostor, 0.3))
    assert weak.how == "auto: impostor FAR 0.0001" and weak.target == 1e-4
    strong = upper_threshold("leak", AUTO, impostor, far=1e-4, paper=0.9, statistic="s")
    assert strong.value == 0.9 and strong.how.startswith("auto: the paper's value")
    given = upper_threshold("leak", 0.5, impostor, far=1e-4, paper=0.3, statistic="s")
    assert given.value == 0.5 and given.how == "given" and given.far == far_at(impostor, 0.5) and given.target is None


def test_lower_threshold_from_the_genuine_tail():
    genuine = np.random.default_rng(3).normal(0.6, 0.1, 10000)
    auto = lower_threshold("intra", AUTO, genuine, frr=0.01, paper=0.3, statistic="s", how="all")
    assert auto.rate == "frr" and auto.far <= 0.01 and auto.value == pytest.approx(stats.norm.ppf(0.01, 0.6, 0.1), abs=0.02)
    assert auto.paper_far == frr_at(genuine, 0.3) and "(all)" in auto.how
    assert "FRR" in auto.describe() and "paper's 0.3" in auto.describe()


@pytest.mark.parametrize("family", ["norm", "gumbel_r"])
def test_a_body_tail_ignores_genuine_matches_at_the_top_that_move_the_empirical_quantile(family):
    rng = np.random.default_rng(4)
    impostor = np.tanh(getattr(stats, family).rvs(loc=0.1, scale=0.05, size=200000, random_state=rng))
    matches = rng.normal(0.9, 0.03, 400)  # 0.2 %: the empirical 1e-4 quantile lands on them
    contaminated = np.concatenate([impostor, matches])
    truth = np.tanh(getattr(stats, family).isf(1e-4, loc=0.1, scale=0.05))
    assert threshold_at_far(contaminated, 1e-4)[0] > truth + 0.2
    tail = fit_body_tail(contaminated, family=family, body=(0.05, 0.98))
    assert tail.isf(1e-4) == pytest.approx(truth, abs=0.01) and tail.sf(truth) == pytest.approx(1e-4, rel=0.3)
    choice = upper_threshold("inter", AUTO, contaminated, far=1e-4, paper=0.2, statistic="s", tail=tail)
    assert choice.value == pytest.approx(tail.isf(1e-4)) and choice.far == pytest.approx(1e-4)
    assert choice.sample_far > 1e-3 and choice.model["family"] == family and family in choice.how
    assert choice.paper_far == pytest.approx(tail.sf(0.2))
    floor = upper_threshold("inter", AUTO, contaminated, far=1e-4, paper=0.99, statistic="s", tail=tail)
    assert floor.value == 0.99 and floor.how.startswith("auto: the paper's value")


def test_a_body_tail_stays_a_cosine_where_a_family_on_the_cosine_would_pass_1():
    cosines = np.random.default_rng(5).uniform(0.3, 0.9, 5000)  # wide: a normal on the cosine puts 1e-6 above 1
    assert stats.norm.isf(1e-6, *stats.norm.fit(cosines)) > 1
    tail = fit_body_tail(np.append(cosines, 1.0), family="gumbel_r", body=(0.05, 0.8))
    assert 0.9 < tail.isf(1e-6) < 1 and tail.sf(1.0) < 1e-6


def test_a_body_tail_needs_a_body_that_spreads():
    with pytest.raises(FitError, match="fewer than"):
        fit_body_tail(np.arange(10.0), family="norm", body=(0.5, 0.99))
    with pytest.raises(FitError, match="do not spread"):
        fit_body_tail(np.ones(1000), family="norm", body=(0.5, 0.99))
    with pytest.raises(ValueError, match="family"):
        fit_body_tail(np.arange(100.0), family="t", body=(0.5, 0.99))


def test_no_scores_or_nan_scores_are_a_user_error():
    with pytest.raises(UserError, match="no scores"):
        threshold_at_far([], 1e-4)
    with pytest.raises(UserError, match="finite"):
        far_at([0.1, np.nan], 0.5)


def test_command_line_types():
    assert parse_threshold("auto") == AUTO and parse_threshold("0.5") == 0.5
    for bad in ("1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_threshold(bad)
    assert parse_rate("1e-4") == 1e-4
    for bad in ("0", "1", "y"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)


def test_two_modes_found_with_valley_and_precision_recall():
    rng = np.random.default_rng(4)
    scores = np.concatenate([rng.normal(0.2, 0.05, 9000), rng.normal(0.8, 0.05, 1000)])
    modes = fit_two_modes(scores)
    assert modes.separated and 0.3 < modes.valley < 0.7
    low, high = modes.means()
    assert low == pytest.approx(0.2, abs=0.03) and high == pytest.approx(0.8, abs=0.03)
    assert modes.mixture.weight_high == pytest.approx(0.1, abs=0.02)
    precision, recall = modes.precision_recall(modes.valley)
    assert precision > 0.99 and recall > 0.99
    p_low, r_low = modes.precision_recall(0.0)  # everything called: recall 1, precision the high weight
    assert r_low == pytest.approx(1.0, abs=1e-3) and p_low == pytest.approx(modes.mixture.weight_high, abs=0.01)
    assert "two separate modes" in modes.explain() and modes.to_dict()["separated"] is True


def test_one_mode_is_called_one_mode():
    modes = fit_two_modes(np.random.default_rng(5).normal(0.3, 0.1, 5000))
    assert not modes.separated and modes.explain().startswith("one mode") and modes.ashman_d < 3


def test_the_audit_criteria_compare_with_the_better_fixed_setting_of_each_kind():
    from benchmarks.audit_calibration import KINDS, criteria

    def setting(p, r, leaked_share=0.0):
        pr = {"precision": p, "recall": r}
        return {"detection": {k: pr for k in KINDS}, "flagged": {"leaked_pair_share": leaked_share}}

    planted = {"checkpoint": "x/step-1", "planted": True, "fixed (paper)": setting(0.2, 1.0),
               "fixed (demo's T1)": setting(0.7, 0.7), "calibrated (auto)": setting(0.96, 0.66)}
    verdicts = criteria([planted])
    assert len(verdicts) == len(KINDS) and all(v["met"] and v["reference"] == "fixed (demo's T1)" for v in verdicts)
    planted["calibrated (auto)"] = setting(None, 0.0)  # nothing flagged
    assert not any(v["met"] for v in criteria([planted]))
    clean = {"checkpoint": "y/step-2", "planted": False, "calibrated (auto)": setting(None, None, 0.06)}
    assert criteria([clean]) == [{"criterion": "C1", "checkpoint": "step-2", "leaked_pair_share": 0.06, "met": False}]


def _planted_label_noise(rng, n=40000, weight=0.03):
    """Own-centre cosines: genuine images near 0.85, a share `weight` of noise scored like an image against
    another class's centre (normal at 0.0, sd 0.25); and an independent sample of that noise."""
    noisy = rng.random(n) < weight
    genuine = 1 - rng.gamma(2.0, 0.06, n)
    scores = np.where(noisy, rng.normal(0.0, 0.25, n), genuine)
    return scores, noisy, rng.normal(0.0, 0.25, 20000)


def test_label_noise_weight_split_and_estimates_match_the_planted_mixture():
    scores, noisy, other = _planted_label_noise(np.random.default_rng(0))
    noise = fit_label_noise(np.append(scores, np.nan), other)
    assert noise.weight == pytest.approx(noisy.mean(), abs=0.003)
    grid = np.linspace(0.0, 0.9, 181)
    f1 = [2 * (noisy & (scores < t)).sum() / ((scores < t).sum() + noisy.sum()) for t in grid]
    assert noise.threshold == pytest.approx(grid[int(np.argmax(f1))], abs=0.04)
    flagged = scores < noise.threshold
    assert noise.precision == pytest.approx((flagged & noisy).sum() / flagged.sum(), abs=0.03)
    assert noise.recall == pytest.approx((flagged & noisy).sum() / noisy.sum(), abs=0.03)
    assert noise.genuine_frr == pytest.approx((flagged & ~noisy).sum() / (~noisy).sum(), abs=0.002)


def test_no_label_noise_is_a_fit_error_not_a_threshold():
    scores, noisy, other = _planted_label_noise(np.random.default_rng(1))
    with pytest.raises(FitError, match="no label noise"):
        fit_label_noise(scores[~noisy], other)
