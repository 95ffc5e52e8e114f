"""Extreme-value fits for the two separation problems: Otsu's threshold, a weighted Weibull MLE, and a
two-Weibull mixture fitted by EM.

    t = otsu_threshold(scores)
    fit = fit_weibull(x)                                   # x > 0; fit.shape, fit.scale
    mix = fit_weibull_mixture(scores, init_threshold=t)    # mix.low / mix.high, mix.weight_high

Scores (cosines, margins) may be negative; a Weibull lives on x > 0, so the mixture is fitted to
`scores - shift` with `shift` just below the smallest score (recorded in the result). The
component distributions are `scipy.stats.weibull_min`; the weighted MLE for each EM M-step solves
the shape equation with `scipy.optimize.brentq` (scipy's own `fit` takes no sample weights) and
gives the scale in closed form.

Otsu is written out here (a dozen lines over `numpy.histogram`) rather than taken from
scikit-image, which would be a large dependency for one function.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

from fftrain.errors import UserError

OTSU_BINS = 256


class FitError(UserError, ValueError):
    """Scores that a threshold or a Weibull cannot be fitted to (too few, constant, not finite)."""


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """The threshold maximising the between-class variance of a `bins`-bin histogram (Otsu 1979);
    values above it form the upper class."""
    values = _checked(values, "otsu_threshold", minimum=2)
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)[:-1].astype(np.float64)
    weight_high = counts.sum() - weight_low
    mass = np.cumsum(counts * centres)[:-1]
    mean_low = mass / np.maximum(weight_low, 1)
    mean_high = (mass[-1] + counts[-1] * centres[-1] - mass) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1 + int(np.argmax(between))])


@dataclass(frozen=True)
class Weibull:
    """weibull_min(shape, loc=shift, scale): density of `shift + X`, X ~ Weibull(shape, scale)."""

    shape: float
    scale: float
    shift: float = 0.0

    @property
    def dist(self):
        return stats.weibull_min(self.shape, loc=self.shift, scale=self.scale)

    def to_dict(self) -> dict:
        return asdict(self)


def _checked(values, what: str, minimum: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < minimum:
        raise FitError(f"{what}: needs at least {minimum} values, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise FitError(f"{what}: values must be finite")
    if values.max() == values.min():
        raise FitError(f"{what}: all {values.size} values are equal ({values[0]:.6g}); nothing to separate")
    return values


def fit_weibull(x: np.ndarray, weights: np.ndarray | None = None, shift: float = 0.0) -> Weibull:
    """Weighted maximum-likelihood Weibull of `x - shift` (all > 0). Shape k solves
    1/k + E_w[ln x] - E_w[x^k ln x] / E_w[x^k] = 0; scale = E_w[x^k]^(1/k)."""
    x = np.asarray(x, dtype=np.float64) - shift
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = w > 0
    x, w = x[keep], w[keep] / w[keep].sum() if keep.any() else w[keep]
    if x.size < 2 or np.any(x <= 0) or np.ptp(x) == 0:
        raise FitError(f"fit_weibull: needs at least 2 distinct values above the shift {shift:.6g}")
    log_x = np.log(x)
    mean_log = float(w @ log_x)
    ref = x.max()

    def shape_equation(k: float) -> float:
        xk = (x / ref) ** k  # scaled by max(x)^k: the ratio is unchanged and nothing overflows
        return 1.0 / k + mean_log - float(w @ (xk * log_x)) / float(w @ xk)

    low, high = 1e-3, 1.0
    while shape_equation(high) > 0 and high < 1e4:
        high *= 2.0
    k = optimize.brentq(shape_equation, low, high, xtol=1e-10) if shape_equation(high) <= 0 else high
    scale = ref * float(w @ (x / ref) ** k) ** (1.0 / k)
    return Weibull(float(k), float(scale), float(shift))


@dataclass(frozen=True)
class WeibullMixture:
    """(1 - weight_high) * low + weight_high * high, `low` the component of the smaller mean."""

    low: Weibull
    high: Weibull
    weight_high: float
    log_likelihood: float
    iterations: int
    converged: bool

    def posterior_high(self, values: np.ndarray) -> np.ndarray:
        p_low = (1.0 - self.weight_high) * self.low.dist.pdf(values)
        p_high = self.weight_high * self.high.dist.pdf(values)
        return p_high / np.maximum(p_low + p_high, 1e-300)

    def to_dict(self) -> dict:
        return {"low": self.low.to_dict(), "high": self.high.to_dict(), "weight_high": self.weight_high,
                "log_likelihood": self.log_likelihood, "iterations": self.iterations, "converged": self.converged}

    @classmethod
    def from_dict(cls, d: dict) -> "WeibullMixture":
        """The inverse of `to_dict`."""
        return cls(Weibull(**d["low"]), Weibull(**d["high"]), d["weight_high"], d["log_likelihood"],
                   d["iterations"], d["converged"])


def mixture_shift(values: np.ndarray) -> float:
    """Just below the smallest value: 1% of the range below it."""
    return float(values.min() - 0.01 * np.ptp(values))


def fit_weibull_mixture(values: np.ndarray, *, init_threshold: float | None = None, max_iter: int = 300,
                        tol: float = 1e-8) -> WeibullMixture:
    """Two-Weibull mixture by EM, started from the split at `init_threshold` (Otsu's by default)."""
    values = _checked(values, "fit_weibull_mixture", minimum=4)
    shift = mixture_shift(values)
    t = otsu_threshold(values) if init_threshold is None else float(init_threshold)
    upper = values > t
    if upper.sum() < 2 or (~upper).sum() < 2:
        raise FitError(f"fit_weibull_mixture: the initial threshold {t:.4g} leaves {int((~upper).sum())} values "
                       f"below and {int(upper.sum())} above; each side needs at least 2")
    low, high = fit_weibull(values[~upper], shift=shift), fit_weibull(values[upper], shift=shift)
    weight = float(upper.mean())
    previous, converged, it = -np.inf, False, 0
    for it in range(1, max_iter + 1):
        dens_low = (1 - weight) * low.dist.pdf(values)
        dens_high = weight * high.dist.pdf(values)
        total = np.maximum(dens_low + dens_high, 1e-300)
        log_likelihood = float(np.log(total).sum())
        resp = dens_high / total
        if abs(log_likelihood - previous) <= tol * abs(log_likelihood):
            converged = True
            break
        previous = log_likelihood
        weight = float(np.clip(resp.mean(), 1e-6, 1 - 1e-6))
        low, high = fit_weibull(values, 1 - resp, shift), fit_weibull(values, resp, shift)
    if low.dist.mean() > high.dist.mean():
        low, high, weight = high, low, 1 - weight
    return WeibullMixture(low, high, weight, log_likelihood, it, converged)
