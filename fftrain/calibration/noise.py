"""Label noise in a class: a lower component of known shape under the genuine scores, and the split
that best separates the two.

    noise = fit_label_noise(own_centre_cosines, other_class_cosines)
    noise.threshold, noise.weight, noise.precision, noise.recall   # estimates under the model below

An image filed under the wrong class is another person's image scored against that class: its
cosine to the class centre is drawn like an image's cosine to the centre of *another* class. That
second sample (`noise_scores`: images against a random other class) gives the noise component's
shape N(t) = P(noise < t) without any fit. Genuine images have next to no mass below the noise
sample's median m, so the share of own-centre cosines below m estimates the noise weight:
w = F(m) / N(m), F the own-centre scores' distribution. Flagging the scores below t then finds,
in expectation, a fraction R(t) = N(t) of the noise, at precision P(t) = w N(t) / F(t); the
threshold is the t >= m of the largest estimated F1 = 2 w N(t) / (F(t) + w).

The estimates lean safe: a mislabeled image pulls its own class's centre (and a network that has
fitted it moves it further), so real noise sits a little above the noise sample and its recall at
t is somewhat higher than estimated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fftrain.calibration.evt import FitError

MIN_NOISE_IMAGES = 10
"""below this many estimated noise scores, no noise is reported (the estimate is a handful of samples)"""


@dataclass(frozen=True)
class LabelNoise:
    threshold: float
    weight: float
    """estimated share of the scores that are noise"""
    precision: float
    recall: float
    genuine_frr: float
    """estimated share of the genuine scores below the threshold"""
    anchor: float
    """the noise sample's median, where the weight is read"""
    samples: int
    noise_samples: int

    def explain(self) -> str:
        return (f"label noise estimated at {self.weight:.2%} of the images (their share below {self.anchor:.3f}, the "
                f"median of an image against another class's centre); the split of best estimated F1: precision "
                f"{self.precision:.2f}, recall {self.recall:.2f}")

    def to_dict(self) -> dict:
        return asdict(self)


def fit_label_noise(scores, noise_scores, *, min_noise: int = MIN_NOISE_IMAGES) -> LabelNoise:
    """scores: the own-centre cosines (NaN dropped); noise_scores: cosines of images to another class's
    centre. Raises FitError when the estimated noise is under `min_noise` scores."""
    s = np.sort(_finite(scores, "scores"))
    z = np.sort(_finite(noise_scores, "noise scores"))
    anchor = float(np.median(z))
    below = float(np.searchsorted(s, anchor, side="left"))
    weight = min(1.0, below / s.size / max(np.searchsorted(z, anchor, side="left") / z.size, 1.0 / z.size))
    if weight * s.size < min_noise:
        raise FitError(f"no label noise: {int(below)} of {s.size} images lie below {anchor:.3f}, the median of an "
                       f"image against another class's centre")
    candidates = s[np.searchsorted(s, anchor, side="left"):]
    if candidates.size == 0:
        raise FitError(f"label noise: every score lies below {anchor:.3f}, the median of an image against another "
                       "class's centre: no genuine component")
    flagged = np.searchsorted(s, candidates, side="left") / s.size  # F(t): scores strictly below t
    found = np.searchsorted(z, candidates, side="left") / z.size    # N(t)
    f1 = 2 * weight * found / (flagged + weight)
    best = int(np.argmax(f1))
    t, f, n = float(candidates[best]), float(flagged[best]), float(found[best])
    return LabelNoise(threshold=t, weight=weight, precision=min(1.0, weight * n / f) if f > 0 else 1.0, recall=n,
                      genuine_frr=max(0.0, f - weight * n) / max(1e-12, 1 - weight), anchor=anchor,
                      samples=int(s.size), noise_samples=int(z.size))


def _finite(values, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise FitError(f"label noise: the {what} must be finite and not empty")
    return v


__all__ = ["LabelNoise", "MIN_NOISE_IMAGES", "fit_label_noise"]
