"""Paired statistics across seeds: mean difference with a 95% t-interval."""

from __future__ import annotations

import math

import numpy as np


def paired(a, b) -> dict:
    """Mean of a - b over seeds with a 95% t-interval (None with fewer than 2 seeds)."""
    from scipy import stats

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": len(d)}
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(d)}



def mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def equivalent(a, b, bound: float) -> dict:
    """Two one-sided tests of a - b == 0 over paired seeds: met when the 90% t-interval of the mean difference
    lies inside [-bound, +bound] (None-interval and not met with fewer than 2 seeds)."""
    from scipy import stats

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "lo90": None, "hi90": None, "n": len(d), "bound": bound, "met": False}
    half = float(stats.t.ppf(0.95, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    lo, hi = mean - half, mean + half
    return {"mean": mean, "lo90": lo, "hi90": hi, "n": len(d), "bound": bound, "met": -bound < lo and hi < bound}
