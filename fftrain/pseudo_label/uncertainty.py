"""Clustering uncertainty (RoyChowdhury et al. 2020, section 3.3): how likely a pseudo-label is wrong.

    margins = cluster_margins(embeddings, labels)      # own-cluster minus nearest-other-cluster cosine
    unc = fit_uncertainty(margins)                      # Otsu split, Weibull fit to the lower part
    weights = (1 - unc.p_wrong) ** gamma                # per-sample loss weights (paper: gamma = 1)

The paper's margin is between the two largest logits of a linear classifier fitted to the cluster
assignments. Here the classifier's weights are the clusters' normalised mean embeddings (what such
a classifier converges to on well-separated clusters, without a training loop): the margin of a
sample is its cosine to its own cluster centre minus the largest cosine to another centre.

The margins are bimodal: a low mode of doubtful assignments (split identities, outliers) and a high
mode of clean ones. Otsu's threshold splits them; a Weibull is fitted to the values below it
(shifted to start just below the smallest margin), and p-(x) = P(a doubtful sample has a margin at
least this large) = the fitted Weibull's survival function at the sample's margin: near 1 for the
smallest margins, near 0 well above the low mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fftrain.calibration.evt import FitError, Weibull, fit_weibull, mixture_shift, otsu_threshold
from fftrain.search import top_k, unit_rows


def cluster_centres(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[K, D] float32 unit mean of each cluster 0..K-1 (samples with label -1 are ignored)."""
    x = unit_rows(embeddings).numpy()
    keep = labels >= 0
    k = int(labels[keep].max()) + 1 if keep.any() else 0
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[keep], x[keep])
    return unit_rows(sums).numpy()


def cluster_margins(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N] cosine to the own cluster centre minus the best cosine to any other centre, for samples
    with label >= 0 (NaN for -1). With a single cluster the other cosine is taken as -1."""
    labels = np.asarray(labels, dtype=np.int64)
    x = unit_rows(embeddings).numpy()
    centres = cluster_centres(x, labels)
    margins = np.full(len(x), np.nan)
    keep = np.flatnonzero(labels >= 0)
    if not len(keep):
        return margins
    own = np.einsum("nd,nd->n", x[keep], centres[labels[keep]])
    sims, ids = (t.numpy() for t in top_k(x[keep], centres, min(2, len(centres))))
    first_is_own = ids[:, 0] == labels[keep]
    other = np.where(first_is_own, sims[:, 1] if sims.shape[1] > 1 else -1.0, sims[:, 0])
    margins[keep] = own - other
    return margins


@dataclass
class Uncertainty:
    margins: np.ndarray
    otsu_threshold: float
    low: Weibull
    p_wrong: np.ndarray  # [N] p-(x); NaN where the margin is NaN

    def weights(self, gamma: float = 1.0) -> np.ndarray:
        return np.where(np.isnan(self.p_wrong), 0.0, (1.0 - np.nan_to_num(self.p_wrong)) ** gamma)

    def summary(self, gamma: float) -> dict:
        w = self.weights(gamma)[~np.isnan(self.margins)]
        return {"otsu_threshold": self.otsu_threshold, "weibull_low": self.low.to_dict(), "gamma": gamma,
                "mean_weight": float(w.mean()) if w.size else None,
                "weight_quantiles": {str(q): float(np.quantile(w, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
                if w.size else None}


def fit_uncertainty(margins: np.ndarray) -> Uncertainty:
    """Otsu split of the margins, Weibull on the lower part, p-(x) its survival function."""
    margins = np.asarray(margins, dtype=np.float64)
    valid = margins[~np.isnan(margins)]
    if valid.size < 4:
        raise FitError(f"clustering uncertainty: needs at least 4 clustered samples, got {valid.size}")
    threshold = otsu_threshold(valid)
    shift = mixture_shift(valid)
    low = fit_weibull(valid[valid <= threshold], shift=shift)
    p_wrong = np.full(len(margins), np.nan)
    ok = ~np.isnan(margins)
    p_wrong[ok] = low.dist.sf(margins[ok])
    return Uncertainty(margins, threshold, low, p_wrong)
