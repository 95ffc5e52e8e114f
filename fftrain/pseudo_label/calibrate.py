"""The clustering's edge threshold and each cluster's estimated purity, from the model's own scores.

    sample = reference_pairs(embeddings, overlap, nearest, max_pairs=200_000, seed=0)
    choice = edge_threshold("auto", sample, far=1e-4, default=0.45)     # calibration.thresholds.Threshold
    purity = cluster_purity(embeddings, clusters, choice.value, sample.tar(choice.value))

Reference pairs come from the unlabeled images the separation called overlapping, each assigned to its
nearest labeled class: two of them assigned to two different classes are two people (impostors), two
assigned to one class one person (genuine). They are the same images, embedded the same way, as the
pairs the kNN graph connects, so the impostor FAR of an edge threshold is read off them directly. The
auto threshold is the cosine at impostor FAR `far`, never below the backend's default; without
reference pairs (--overlap none / all, or fewer than two labeled classes hit) the default is kept
and the report says so.

A cluster's estimated purity is its pairwise precision as the scores see it: the fraction of its member
pairs above the edge threshold, divided by the fraction of genuine pairs above it (TAR), capped at 1.
Pairs of two people are above it at the rate FAR (negligible), pairs of one person at the rate TAR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fftrain.calibration.thresholds import AUTO, Threshold, far_at, tar_at, upper_threshold
from fftrain.search import unit_rows

MIN_PAIRS = 100
PURITY_MEMBERS = 256  # members sampled per cluster for its pair cosines


@dataclass
class ReferencePairs:
    impostor: np.ndarray
    genuine: np.ndarray

    def tar(self, threshold: float) -> float | None:
        return tar_at(self.genuine, threshold) if self.genuine.size >= MIN_PAIRS else None


def reference_pairs(embeddings, overlap: np.ndarray, nearest: np.ndarray, *, max_pairs: int, seed: int) -> ReferencePairs:
    ids = np.flatnonzero(overlap)
    empty = ReferencePairs(np.zeros(0), np.zeros(0))
    if ids.size < 2:
        return empty
    rng = np.random.default_rng([seed, 3])
    a, b = rng.choice(ids, max_pairs), rng.choice(ids, max_pairs)
    keep = a != b
    a, b = a[keep], b[keep]
    x = unit_rows(embeddings).numpy()
    cos = np.einsum("ij,ij->i", x[a], x[b]).astype(np.float64)
    same = nearest[a] == nearest[b]
    return ReferencePairs(cos[~same], cos[same])


def edge_threshold(requested, pairs: ReferencePairs, *, far: float, default: float) -> Threshold:
    statistic = "cosine of two overlapping images assigned to two different labeled classes"
    if pairs.impostor.size >= MIN_PAIRS:
        return upper_threshold("edge", requested, pairs.impostor, far=far, paper=default, statistic=statistic)
    value = default if requested == AUTO else float(requested)
    how = "given" if requested != AUTO else (f"the backend's default: only {pairs.impostor.size} impostor reference "
                                             f"pairs (needs {MIN_PAIRS}; they come from overlapping images)")
    return Threshold("edge", value, how, statistic, int(pairs.impostor.size), None, default, None,
                     far if requested == AUTO else None, resolved=False)


def cluster_purity(embeddings, clusters: np.ndarray, threshold: float, tar: float | None, *,
                   seed: int = 0) -> np.ndarray:
    """[K] estimated pairwise precision of each cluster 0..K-1 (NaN where it has one member)."""
    k = int(clusters.max()) + 1 if (clusters >= 0).any() else 0
    x = unit_rows(embeddings).numpy()
    rng = np.random.default_rng([seed, 4])
    out = np.full(k, np.nan)
    for c in range(k):
        members = np.flatnonzero(clusters == c)
        if members.size > PURITY_MEMBERS:
            members = rng.choice(members, PURITY_MEMBERS, replace=False)
        if members.size < 2:
            continue
        sims = x[members] @ x[members].T
        above = float((sims[np.triu_indices(members.size, 1)] > threshold).mean())
        out[c] = min(1.0, above / tar) if tar else above
    return out


__all__ = ["ReferencePairs", "cluster_purity", "edge_threshold", "far_at", "reference_pairs"]
