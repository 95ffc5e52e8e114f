"""The fusion figure (fftrain.fusion.report): one panel whose histogram, fitted modes, valley and T1 come
from the fusion's T1 decision (auto), from a fit of its own (fixed T1), or show that nothing merged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fftrain.config import FusionConfig
from fftrain.fusion.report import REPORT_PNG, top1_figure, top1_histogram, write_report
from fftrain.fusion.threshold import choose_t1


def two_modes(seed=0, n_low=520, n_high=80):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.35, 0.06, n_low), rng.normal(0.85, 0.04, n_high)]).clip(-1, 1)


def vertical_lines(fig) -> dict[str, float]:
    """Legend label -> x of every vertical line of the figure's one panel."""
    (ax,) = fig.axes
    return {line.get_label(): float(line.get_xdata()[0]) for line in ax.lines
            if len(set(np.asarray(line.get_xdata(), dtype=float))) == 1}


def test_auto_draws_the_decisions_valley_t1_and_fitted_modes():
    top1 = two_modes()
    decision = choose_t1(top1, FusionConfig(t1="auto", t1_min=0.7))  # bounded: T1 differs from the valley
    hist = top1_histogram(top1, decision.t1, threshold=decision.to_dict())
    assert hist.t1 == decision.t1 == 0.7 and hist.valley == decision.valley != 0.7 and hist.t1_kind == "auto"
    assert hist.separated and hist.classes == 600
    # the fitted modes are expected proxies per bin: their areas are about the two counts
    bin_width, step = hist.edges[1] - hist.edges[0], hist.curve_x[1] - hist.curve_x[0]
    assert hist.high.sum() * step / bin_width == pytest.approx(80, rel=0.1)
    assert hist.low.sum() * step / bin_width == pytest.approx(520, rel=0.1)
    fig = top1_figure(hist, datasets=6)
    lines = vertical_lines(fig)
    assert lines[f"valley {decision.valley:.3f}"] == pytest.approx(decision.valley)
    assert lines["T1 = 0.700 (auto): 80 above"] == pytest.approx(0.7)
    assert fig.axes[0].get_title() == "Fusion: 600 classes of 6 datasets; T1 = 0.700 (auto)"


def test_a_fixed_t1_is_marked_with_a_fit_of_the_cosines_themselves():
    top1 = two_modes(seed=1)
    hist = top1_histogram(top1, 0.82, threshold=choose_t1(top1, FusionConfig(t1=0.82)).to_dict())
    assert hist.t1 == 0.82 and hist.t1_kind == "fixed" and hist.curve_x is not None
    assert hist.valley == pytest.approx(choose_t1(top1, FusionConfig(t1="auto")).valley)
    above = int((top1 > 0.82).sum())
    assert set(vertical_lines(top1_figure(hist))) == {f"valley {hist.valley:.3f}", f"T1 = 0.820 (fixed): {above} above"}


def test_no_valley_draws_no_t1_and_says_nothing_merged():
    top1 = np.random.default_rng(2).normal(0.4, 0.08, 600)
    decision = choose_t1(top1, FusionConfig(t1="auto"))
    assert not decision.merges
    hist = top1_histogram(top1, 1.0, threshold=decision.to_dict())
    assert hist.t1 is None and hist.t1_kind == "no merge" and not hist.separated
    fig = top1_figure(hist)
    assert not any(label.startswith("T1") for label in vertical_lines(fig))
    assert "no valley, nothing merged" in fig.axes[0].get_title()


def test_too_few_cosines_for_a_fit_still_give_the_histogram():
    hist = top1_histogram(np.array([0.5, 0.9, np.nan]), 0.7)
    assert hist.curve_x is None and hist.valley is None and hist.classes == 3 and hist.values.size == 2


def test_write_report_writes_the_png_of_the_reports_decision(tmp_path):
    top1 = two_modes(seed=3)
    decision = choose_t1(top1, FusionConfig(t1="auto"))
    report = {"settings": {"threshold": decision.to_dict()}, "merged": []}
    paths = write_report(str(tmp_path / "fusion"), report, top1, t1=decision.t1, names=list("abcdef"))
    assert paths["png"].endswith(REPORT_PNG)
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads(open(paths["json"]).read())["settings"]["threshold"]["t1"] == decision.t1
