"""Thresholds from a model's own genuine and impostor score samples, and the error rates they imply.

A decision is "score > t" (a match, a duplicate, a leak). For a sample of impostor scores (pairs
known to be two people) FAR(t) = P(impostor > t); for genuine scores TAR(t) = P(genuine > t) and
FRR(t) = 1 - TAR(t). The empirical quantile is used as it is: a sample of n scores resolves a FAR
down to 1/n, and asking for less returns the largest impostor score with `resolved=False`.

`upper_threshold` (duplicates, leakage, clustering edges) picks the cosine at a target FAR and never
goes below the paper's value: on a weak model the papers' thresholds flag almost everything, on a
strong one the paper's value stays. `lower_threshold` (an image far from its own class) picks the
cosine below which a target fraction of the genuine scores lies. Both record how they were chosen
and the error rates of the chosen and of the paper's value, side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fftrain.errors import UserError

AUTO = "auto"


def parse_threshold(text: str) -> str | float:
    """argparse type: 'auto' or a cosine in [-1, 1]."""
    import argparse

    if text == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'auto' or a cosine in [-1, 1]") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a cosine threshold must lie in [-1, 1]")
    return value


def parse_rate(text: str) -> float:
    """argparse type: a rate in (0, 1)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a rate in (0, 1), e.g. 1e-4") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a rate must lie in (0, 1)")
    return value


def _sorted(scores, what: str) -> np.ndarray:
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise UserError(f"{what}: no scores to calibrate on")
    if not np.all(np.isfinite(scores)):
        raise UserError(f"{what}: scores must be finite")
    return scores


def far_at(impostor, threshold: float) -> float:
    """P(impostor > threshold)."""
    s = _sorted(impostor, "far_at")
    return float((s.size - np.searchsorted(s, threshold, side="right")) / s.size)


def tar_at(genuine, threshold: float) -> float:
    """P(genuine > threshold)."""
    return far_at(genuine, threshold)


def frr_at(genuine, threshold: float) -> float:
    """P(genuine < threshold): the fraction a lower-tail rule flags."""
    s = _sorted(genuine, "frr_at")
    return float(np.searchsorted(s, threshold, side="left") / s.size)


def threshold_at_far(impostor, far: float) -> tuple[float, bool]:
    """(t, resolved): the smallest sample value t with P(impostor > t) <= far; resolved is False when
    the sample is too small for the rate (far < 1/n) and t is the largest impostor score."""
    s = _sorted(impostor, "threshold_at_far")
    allowed = int(np.floor(far * s.size))  # impostor scores that may lie above t
    return float(s[s.size - 1 - min(allowed, s.size - 1)]), allowed >= 1


def threshold_at_frr(genuine, frr: float) -> float:
    """The largest sample value t with P(genuine < t) <= frr."""
    s = _sorted(genuine, "threshold_at_frr")
    return float(s[min(int(np.floor(frr * s.size)), s.size - 1)])


@dataclass(frozen=True)
class Threshold:
    """A chosen threshold and what it means on this model."""

    name: str
    value: float
    how: str
    """'auto: FAR 1e-4 on ...', 'auto: paper's value (FAR ... already below target)', 'given'"""
    statistic: str
    """what the impostor / genuine scores are (e.g. 'image vs nearest other-class centre')"""
    samples: int
    far: float | None
    """the impostor FAR at `value` (upper rules) or the genuine FRR (lower rule)"""
    paper: float | None
    paper_far: float | None
    """the same rate at the paper's value"""
    target: float | None
    """the rate asked for ('auto'), None when the value was given"""
    resolved: bool = True
    """False: the sample is too small to resolve the target rate (the extreme sample was taken)"""
    rate: str = "far"
    """'far' (impostor false-accept rate) or 'frr' (genuine fraction below)"""
    sample_far: float | None = None
    """with a fitted tail: the sample's own rate above `value` (an upper bound: it holds genuine matches)"""
    model: dict | None = None
    """the fit the rates were read from (`tails.BodyTail.to_dict`, or the two-mode fit), None: the sample"""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        text = f"{self.name} {self.value:.3f} ({self.how}; {self.rate.upper()} {_rate(self.far)}"
        if self.paper is not None and self.paper != self.value:
            text += f"; paper's {self.paper} has {self.rate.upper()} {_rate(self.paper_far)}"
        return text + ")"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def upper_threshold(name: str, requested, impostor, *, far: float, paper: float | None, statistic: str,
                    tail=None) -> Threshold:
    """'auto': the cosine at impostor FAR `far`, never below `paper`; a number: that number.
    tail: a `tails.BodyTail` fitted to `impostor`'s body: the rates are read from it, not the sample."""
    s = _sorted(impostor, f"{name} threshold")
    if tail is not None:
        return _upper_from_tail(name, requested, s, tail, far=far, paper=paper, statistic=statistic)
    paper_far = far_at(s, paper) if paper is not None else None
    if requested != AUTO:
        return Threshold(name, float(requested), "given", statistic, s.size, far_at(s, float(requested)), paper,
                         paper_far, None)
    value, resolved = threshold_at_far(s, far)
    how = f"auto: impostor FAR {far:g}" + ("" if resolved else f" (sample of {s.size} resolves only 1/{s.size}: "
                                                              "its largest impostor score)")
    if paper is not None and value < paper:
        value, how = paper, f"auto: the paper's value (FAR {_rate(paper_far)} is already at or below {far:g})"
    return Threshold(name, float(value), how, statistic, s.size, far_at(s, value), paper, paper_far, far, resolved)


def _upper_from_tail(name, requested, s, tail, *, far, paper, statistic) -> Threshold:
    paper_far = tail.sf(paper) if paper is not None else None
    value, how = (float(requested), "given") if requested != AUTO else (tail.isf(far), f"auto: impostor FAR {far:g} "
                                                                         f"under {tail.describe()}")
    if requested == AUTO and paper is not None and value < paper:
        value, how = paper, f"auto: the paper's value (FAR {_rate(paper_far)} under {tail.describe()})"
    return Threshold(name, float(value), how, statistic, s.size, tail.sf(value), paper, paper_far,
                     far if requested == AUTO else None, sample_far=far_at(s, value), model=tail.to_dict())


def lower_threshold(name: str, requested, genuine, *, frr: float, paper: float | None, statistic: str,
                    how: str = "") -> Threshold:
    """'auto': the cosine below which a fraction `frr` of the genuine scores lies; a number: that number."""
    s = _sorted(genuine, f"{name} threshold")
    paper_frr = frr_at(s, paper) if paper is not None else None
    if requested != AUTO:
        return Threshold(name, float(requested), "given", statistic, s.size, frr_at(s, float(requested)), paper,
                         paper_frr, None, rate="frr")
    value = threshold_at_frr(s, frr)
    return Threshold(name, value, f"auto: genuine lower tail {frr:g}" + (f" ({how})" if how else ""), statistic,
                     s.size, frr_at(s, value), paper, paper_frr, frr, rate="frr")
