"""Overlap separation: which unlabeled samples show identities the labeled classes already hold.

    scores, nearest = max_cosine(embeddings, proxies)      # per sample: best cosine to any class proxy
    sep = separate_overlap(scores)                          # Otsu and the Weibull-mixture rule, both
    sep.weibull_overlap, sep.weibull_disjoint, sep.weibull_rejected   # boolean masks

The score is the paper's max-logit with the scale taken out: the largest cosine between the
sample's embedding and the L2-normalised class proxies (the FC rows of the checkpoint). Samples of
labeled identities score high. Two rules, both reported:

- Otsu: overlapping iff score > Otsu's threshold.
- Weibull (RoyChowdhury et al. 2020, section 3.1): a two-Weibull mixture is fitted from Otsu's split;
  t_disjoint is the 95% quantile of the low (disjoint) component and t_overlap the 5% quantile of
  the high (overlapping) one. A sample is overlapping when it lies above t_disjoint and not below
  t_overlap (outside the disjoint component's 95% interval, inside the overlap component's), disjoint
  when it lies below t_overlap and not above t_disjoint, and rejected (neither, e.g. between the
  two when the components overlap) otherwise. Rejected samples are neither clustered nor assigned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fftrain.calibration.evt import WeibullMixture, fit_weibull_mixture, otsu_threshold
from fftrain.search import top_k, unit_rows

CONFIDENCE = 0.95


def max_cosine(embeddings, proxies) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine [N] float64, index of that proxy [N] int64) of each embedding row against all
    proxy rows; both are L2-normalised here. Exact inner-product search (`fftrain.search`)."""
    sims, ids = top_k(unit_rows(embeddings), unit_rows(proxies), 1)
    return sims[:, 0].numpy().astype(np.float64), ids[:, 0].numpy()


@dataclass
class Separation:
    scores: np.ndarray
    otsu_threshold: float
    mixture: WeibullMixture
    t_disjoint: float
    """95% quantile of the disjoint (low) Weibull"""
    t_overlap: float
    """5% quantile of the overlapping (high) Weibull"""

    @property
    def otsu_overlap(self) -> np.ndarray:
        return self.scores > self.otsu_threshold

    @property
    def weibull_overlap(self) -> np.ndarray:
        return (self.scores > self.t_disjoint) & (self.scores >= self.t_overlap)

    @property
    def weibull_disjoint(self) -> np.ndarray:
        return (self.scores < self.t_overlap) & (self.scores <= self.t_disjoint)

    @property
    def weibull_rejected(self) -> np.ndarray:
        return ~(self.weibull_overlap | self.weibull_disjoint)

    def masks(self, rule: str) -> tuple[np.ndarray, np.ndarray]:
        """(overlap, disjoint) under `rule` ('weibull' or 'otsu'); Otsu rejects nothing."""
        if rule == "otsu":
            return self.otsu_overlap, ~self.otsu_overlap
        if rule == "weibull":
            return self.weibull_overlap, self.weibull_disjoint
        raise ValueError(f"unknown separation rule {rule!r}; available: ['weibull', 'otsu']")

    def summary(self) -> dict:
        n = len(self.scores)
        return {"num_samples": n, "otsu_threshold": self.otsu_threshold, "t_disjoint": self.t_disjoint,
                "t_overlap": self.t_overlap, "confidence": CONFIDENCE, "mixture": self.mixture.to_dict(),
                "otsu": {"overlap": int(self.otsu_overlap.sum()), "disjoint": int((~self.otsu_overlap).sum())},
                "weibull": {"overlap": int(self.weibull_overlap.sum()), "disjoint": int(self.weibull_disjoint.sum()),
                            "rejected": int(self.weibull_rejected.sum())}}


def separate_overlap(scores: np.ndarray) -> Separation:
    """Both rules on the max-cosine scores (raises evt.FitError when the scores cannot be split)."""
    scores = np.asarray(scores, dtype=np.float64)
    otsu = otsu_threshold(scores)
    mixture = fit_weibull_mixture(scores, init_threshold=otsu)
    t_disjoint = float(mixture.low.dist.ppf(CONFIDENCE))
    t_overlap = float(mixture.high.dist.ppf(1 - CONFIDENCE))
    return Separation(scores, otsu, mixture, t_disjoint, t_overlap)


def error_rates(predicted_overlap: np.ndarray, true_overlap: np.ndarray,
                rejected: np.ndarray | None = None) -> dict:
    """FPR: disjoint samples called overlapping; FNR: overlapping samples called disjoint (rejected
    samples are neither, counted apart), as fractions of the true class."""
    true_overlap = np.asarray(true_overlap, bool)
    rejected = np.zeros_like(true_overlap) if rejected is None else np.asarray(rejected, bool)
    called_overlap = np.asarray(predicted_overlap, bool) & ~rejected
    called_disjoint = ~np.asarray(predicted_overlap, bool) & ~rejected
    n_pos, n_neg = int(true_overlap.sum()), int((~true_overlap).sum())
    return {"fpr": float((called_overlap & ~true_overlap).sum() / n_neg) if n_neg else None,
            "fnr": float((called_disjoint & true_overlap).sum() / n_pos) if n_pos else None,
            "rejected": float(rejected.mean()), "true_overlap": n_pos, "true_disjoint": n_neg}
