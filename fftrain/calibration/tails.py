"""An impostor tail read from the body of a sample that holds some genuine matches.

    tail = fit_body_tail(cosines, family="norm", body=(0.50, 0.99))  # or "gumbel_r" for a max statistic
    t = tail.isf(1e-4)                                                 # the cosine 1 impostor in 10^4 exceeds
    tail.sf(0.7)                                                       # the impostor FAR at 0.7 under the fit

The impostor samples an audit can draw are not clean: two classes of different datasets may be one
person (the overlaps FaceFusion merges), a dataset has its own duplicates, some images are filed
under the wrong class. Those matches sit at the top of the sample, and where they are more common
than the target rate (1e-4) the empirical quantile lands on them. A location-scale family fitted to
the sample's body - the quantile levels in `body`, which the matches do not reach while they are
fewer than `1 - body[1]` of the sample - and extrapolated to the target rate does not move with them.

The scores are cosines, bounded by 1, and a family on the cosine itself puts thresholds above 1
(found by the audit's pilot run: 1.2 and 1.4); so the family describes Fisher's z = atanh(cosine),
which is unbounded, and thresholds are mapped back with tanh. The fit is a least-squares line through
the probability plot (sample z quantile against the family's standard quantile at the same level,
`scipy.stats` for the family), over the body's levels only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from fftrain.calibration.evt import FitError

FAMILIES = ("norm", "gumbel_r")
MIN_BODY_POINTS = 20
_EDGE = 1e-7  # cosines of exactly +-1 (a duplicate image) would map to an infinite z


def fisher_z(cosines) -> np.ndarray:
    return np.arctanh(np.clip(np.asarray(cosines, dtype=np.float64), -1 + _EDGE, 1 - _EDGE))


@dataclass(frozen=True)
class BodyTail:
    family: str
    loc: float
    scale: float
    body: tuple[float, float]
    """the quantile levels the fit used"""
    samples: int

    @property
    def dist(self):
        return getattr(stats, self.family)(loc=self.loc, scale=self.scale)

    def sf(self, t: float) -> float:
        """P(impostor > t) under the fit (t a cosine)."""
        return float(self.dist.sf(fisher_z(t)))

    def isf(self, rate: float) -> float:
        """The cosine that a fraction `rate` of impostors exceeds, under the fit."""
        return float(np.tanh(self.dist.isf(rate)))

    def describe(self) -> str:
        return (f"a {self.family} of atanh(cosine) fitted to the impostor sample's quantiles "
                f"{self.body[0]:g}-{self.body[1]:g} (location {self.loc:.3f}, scale {self.scale:.3f}; robust to "
                f"genuine matches in the top {1 - self.body[1]:.0%})")

    def to_dict(self) -> dict:
        return {"family": self.family, "loc": self.loc, "scale": self.scale, "body": list(self.body),
                "samples": self.samples}


def fit_body_tail(scores, *, family: str, body: tuple[float, float]) -> BodyTail:
    """Fit `family` (a scipy.stats location-scale distribution) to the quantile levels `body` of the
    cosines' `fisher_z`."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    lo, hi = body
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"body must be two quantile levels 0 <= lo < hi <= 1, got {body}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise FitError("impostor tail: scores must be finite")
    s = np.sort(fisher_z(s))
    levels = (np.arange(s.size) + 0.5) / max(1, s.size)
    inside = (levels >= lo) & (levels <= hi)
    if int(inside.sum()) < MIN_BODY_POINTS:
        raise FitError(f"impostor tail: {s.size} scores leave fewer than {MIN_BODY_POINTS} in the body {lo:g}-{hi:g}")
    standard = getattr(stats, family).ppf(levels[inside])
    scale, loc = np.polyfit(standard, s[inside], 1)
    if not scale > 0:
        raise FitError("impostor tail: the body's scores do not spread (constant scores?)")
    return BodyTail(family, float(loc), float(scale), (float(lo), float(hi)), int(s.size))


__all__ = ["BodyTail", "FAMILIES", "fisher_z", "fit_body_tail"]
