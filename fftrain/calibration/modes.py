"""Two-mode structure of a score sample: a two-Weibull mixture (evt.py), its valley and a verdict.

    modes = fit_two_modes(scores)          # e.g. proxy-pair cosines, max cosines, cosines to a class centre
    modes.separated                        # Ashman's D >= min_d and both components carry weight
    modes.valley                           # the lowest mixture density between the two component modes
    modes.precision_recall(t)              # of "score > t" for the high component, under the fit
    modes.explain()                        # one sentence for a user: the components, D, the verdict

Ashman's D = sqrt(2) |mu_high - mu_low| / sqrt(var_low + var_high); above 2 the mixture is cleanly
bimodal (Ashman et al. 1994). The default bar 3 comes from the pseudo-labels' separation, where EM
splitting a single mode gave D <= 2.05 on planted worlds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fftrain.calibration.evt import FitError, WeibullMixture, fit_weibull_mixture, otsu_threshold

MIN_ASHMAN_D = 3.0
MIN_WEIGHT = 0.005
VALLEY_GRID = 512


@dataclass(frozen=True)
class TwoModes:
    mixture: WeibullMixture
    otsu: float
    ashman_d: float
    valley: float
    min_d: float
    min_weight: float

    @property
    def separated(self) -> bool:
        w = self.mixture.weight_high
        return self.ashman_d >= self.min_d and min(w, 1 - w) >= self.min_weight

    def precision_recall(self, threshold: float) -> tuple[float, float]:
        """(precision, recall) of calling the high component by score > threshold, under the fit."""
        w = self.mixture.weight_high
        true_pos = w * float(self.mixture.high.dist.sf(threshold))
        false_pos = (1 - w) * float(self.mixture.low.dist.sf(threshold))
        recall = true_pos / w if w > 0 else 0.0
        precision = true_pos / (true_pos + false_pos) if true_pos + false_pos > 0 else 1.0
        return precision, recall

    def means(self) -> tuple[float, float]:
        return float(self.mixture.low.dist.mean()), float(self.mixture.high.dist.mean())

    def explain(self) -> str:
        low, high = self.means()
        verdict = "two separate modes" if self.separated else "one mode"
        return (f"{verdict}: fitted components at {low:.3f} ({1 - self.mixture.weight_high:.1%}) and {high:.3f} "
                f"({self.mixture.weight_high:.1%}), Ashman's D {self.ashman_d:.2f} (separate needs >= {self.min_d:g} "
                f"and each component >= {self.min_weight:.1%}), valley {self.valley:.3f}")

    def to_dict(self) -> dict:
        low, high = self.means()
        return {"mixture": self.mixture.to_dict(), "otsu": self.otsu, "ashman_d": self.ashman_d,
                "valley": self.valley, "mean_low": low, "mean_high": high, "separated": self.separated,
                "min_d": self.min_d, "min_weight": self.min_weight}

    @classmethod
    def from_dict(cls, d: dict) -> "TwoModes":
        """The fit `to_dict` wrote (its derived fields recomputed from the mixture)."""
        return from_mixture(WeibullMixture.from_dict(d["mixture"]), d["otsu"], min_d=d["min_d"],
                            min_weight=d["min_weight"])


def ashman_d(mixture: WeibullMixture) -> float:
    low, high = mixture.low.dist, mixture.high.dist
    return float(np.sqrt(2) * abs(high.mean() - low.mean()) / np.sqrt(low.var() + high.var()))


def valley(mixture: WeibullMixture) -> float:
    """The lowest mixture density between the two component modes (their medians where a mode sits
    on the support's edge); where the density has no dip there, the point where the posterior is 1/2."""
    low, high = mixture.low.dist, mixture.high.dist
    a, b = sorted((float(low.median()), float(high.median())))
    grid = np.linspace(a, b, VALLEY_GRID)
    density = (1 - mixture.weight_high) * low.pdf(grid) + mixture.weight_high * high.pdf(grid)
    inner = density[1:-1]
    if inner.size and inner.min() < min(density[0], density[-1]):
        return float(grid[1 + int(np.argmin(inner))])
    posterior = mixture.posterior_high(grid)
    return float(grid[int(np.argmin(np.abs(posterior - 0.5)))])


def from_mixture(mixture: WeibullMixture, otsu: float, *, min_d: float = MIN_ASHMAN_D,
                 min_weight: float = MIN_WEIGHT) -> TwoModes:
    return TwoModes(mixture, float(otsu), ashman_d(mixture), valley(mixture), min_d, min_weight)


def fit_two_modes(scores, *, min_d: float = MIN_ASHMAN_D, min_weight: float = MIN_WEIGHT) -> TwoModes:
    """The two-Weibull mixture from Otsu's split (raises evt.FitError when the scores cannot be split)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    otsu = otsu_threshold(scores)
    return from_mixture(fit_weibull_mixture(scores, init_threshold=otsu), otsu, min_d=min_d, min_weight=min_weight)


__all__ = ["FitError", "TwoModes", "ashman_d", "fit_two_modes", "from_mixture", "valley"]
