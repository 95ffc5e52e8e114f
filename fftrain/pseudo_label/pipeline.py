"""Embeddings + class proxies -> pseudo-labels and per-sample weights (no files, no processes).

    result = pseudo_label(embeddings, proxies, PseudoLabelOptions())
    result.labels        # [N] local class of each sample in the new dataset, -1: not written
    result.weights       # [N] loss weight (1 - p-(x))^gamma of each written sample

Steps: max cosine to the proxies -> overlap separation (Otsu and Weibull; `rule` picks the one
applied) -> kNN graph and clustering of the disjoint samples -> clusters below `min_cluster_size`
dropped -> cluster margins, Weibull p-(x), weights. Overlapping samples are discarded (default) or,
with `overlapping='assign'`, each becomes a member of a class standing for its nearest labeled
class (weight 1): one class per labeled class hit, after the clusters. Rejected samples (Weibull
rule: inside neither interval) are never written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fftrain.errors import UserError
from fftrain.pseudo_label.clustering import BACKENDS, DEFAULT_RESOLUTION, KNN_INDEXES, cluster, drop_small, knn_graph
from fftrain.calibration.evt import FitError
from fftrain.pseudo_label.separation import Separation, max_cosine, separate_overlap
from fftrain.pseudo_label.uncertainty import Uncertainty, cluster_margins, fit_uncertainty

OVERLAP_MODES = ("auto", "none", "all")
OVERLAPPING = ("discard", "assign")
RULES = ("weibull", "otsu")
MIN_ASHMAN_D = 3.0  # two separate modes: D > 2 (Ashman 1994); one mode split by EM gave D <= 2.05 on planted worlds


class PseudoLabelError(UserError, ValueError):
    """Unlabeled data the method cannot work on (empty, one mode only, nothing left to cluster)."""


@dataclass
class PseudoLabelOptions:
    rule: str = "weibull"
    """overlap separation applied: 'weibull' (95% intervals of the two-Weibull mixture) or 'otsu'"""
    overlap: str = "auto"
    """'auto': separate; 'none': every sample is disjoint; 'all': every sample overlaps"""
    overlapping: str = "discard"
    """overlapping samples: 'discard' or 'assign' (to a class for their nearest labeled class)"""
    backend: str = "infomap"
    knn_k: int = 30
    knn_index: str = "auto"
    threshold: float | None = None
    """kNN edges of cosine at or below this are dropped before clustering; None: the backend's default"""
    resolution: float = DEFAULT_RESOLUTION
    """leiden (CPM) resolution"""
    min_cluster_size: int = 3
    gamma: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name, value, choices in (("rule", self.rule, RULES), ("overlap", self.overlap, OVERLAP_MODES),
                                     ("overlapping", self.overlapping, OVERLAPPING),
                                     ("backend", self.backend, BACKENDS), ("knn_index", self.knn_index, KNN_INDEXES)):
            if value not in choices:
                raise ValueError(f"{name}={value!r}; available: {list(choices)}")
        if self.knn_k < 1 or self.min_cluster_size < 1:
            raise ValueError(f"knn_k={self.knn_k} and min_cluster_size={self.min_cluster_size} must be >= 1")
        if self.gamma < 0:
            raise ValueError(f"gamma={self.gamma} must be >= 0")


@dataclass
class PseudoLabels:
    scores: np.ndarray
    nearest_class: np.ndarray
    overlap: np.ndarray
    disjoint: np.ndarray
    clusters: np.ndarray          # [N] cluster of each disjoint sample after min-size filtering, else -1
    labels: np.ndarray            # [N] local class in the output dataset, -1: not written
    weights: np.ndarray           # [N] loss weight, 0 where not written
    p_wrong: np.ndarray           # [N] p-(x), NaN where not clustered
    num_clusters: int
    assigned_classes: np.ndarray  # labeled (fused) class of each class after the clusters ('assign')
    separation: Separation | None
    uncertainty: Uncertainty | None
    timings: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.num_clusters + len(self.assigned_classes)


def ashman_d(separation: Separation) -> float:
    """Ashman's D between the two fitted components; above 2 the mixture is cleanly bimodal."""
    low, high = separation.mixture.low.dist, separation.mixture.high.dist
    return float(np.sqrt(2) * abs(high.mean() - low.mean()) / np.sqrt(low.var() + high.var()))


def _separate(scores: np.ndarray, options: PseudoLabelOptions) -> tuple[np.ndarray, np.ndarray, Separation | None]:
    n = len(scores)
    if options.overlap == "none":
        return np.zeros(n, bool), np.ones(n, bool), None
    if options.overlap == "all":
        return np.ones(n, bool), np.zeros(n, bool), None
    try:
        separation = separate_overlap(scores)
    except FitError as e:
        raise PseudoLabelError(f"overlap separation failed: {e}") from None
    d = ashman_d(separation)
    if d < MIN_ASHMAN_D or min(separation.mixture.weight_high, 1 - separation.mixture.weight_high) < 0.005:
        raise PseudoLabelError(
            f"the max-cosine scores have one mode, not two (Ashman's D {d:.2f} < {MIN_ASHMAN_D}; median "
            f"{np.median(scores):.3f}): either no unlabeled identity is a labeled one or all are; "
            "say which with --overlap none (cluster everything) or --overlap all")
    overlap, disjoint = separation.masks(options.rule)
    return overlap, disjoint, separation


def pseudo_label(embeddings: np.ndarray, proxies: np.ndarray, options: PseudoLabelOptions) -> PseudoLabels:
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise PseudoLabelError(f"no unlabeled samples to label (embeddings of shape {embeddings.shape})")
    if proxies.shape[1] != embeddings.shape[1]:
        raise PseudoLabelError(f"embeddings are {embeddings.shape[1]}-d but the class proxies are {proxies.shape[1]}-d")
    timings = {}
    started = time.perf_counter()
    scores, nearest = max_cosine(embeddings, proxies)
    overlap, disjoint, separation = _separate(scores, options)
    timings["separation_s"] = time.perf_counter() - started
    n = len(embeddings)
    clusters = np.full(n, -1, dtype=np.int64)
    p_wrong = np.full(n, np.nan)
    uncertainty = None
    disjoint_ids = np.flatnonzero(disjoint)
    if len(disjoint_ids) >= 2:
        graph = knn_graph(embeddings[disjoint_ids], options.knn_k, index=options.knn_index, seed=options.seed)
        timings["knn_s"] = graph.seconds
        started = time.perf_counter()
        found = cluster(graph, backend=options.backend, threshold=options.threshold,
                        resolution=options.resolution, seed=options.seed)
        timings["cluster_s"] = time.perf_counter() - started
        clusters[disjoint_ids] = drop_small(found, options.min_cluster_size)
    num_clusters = int(clusters.max()) + 1
    if num_clusters >= 1:
        started = time.perf_counter()
        margins = cluster_margins(embeddings, clusters)
        try:
            uncertainty = fit_uncertainty(margins)
            p_wrong = uncertainty.p_wrong
        except FitError:  # too few clustered samples for a fit: every kept sample counts fully
            p_wrong = np.where(clusters >= 0, 0.0, np.nan)
        timings["uncertainty_s"] = time.perf_counter() - started
    labels = clusters.copy()
    weights = np.where(clusters >= 0, (1.0 - np.nan_to_num(p_wrong)) ** options.gamma, 0.0)
    assigned = np.zeros(0, dtype=np.int64)
    if options.overlapping == "assign" and overlap.any():
        assigned, local = np.unique(nearest[overlap], return_inverse=True)
        labels[overlap] = num_clusters + local
        weights[overlap] = 1.0
    if not (labels >= 0).any():
        raise PseudoLabelError(
            f"nothing to write: {int(overlap.sum())} of {n} samples overlap the labeled classes "
            f"({options.overlapping}), {len(disjoint_ids)} are disjoint and no cluster reached "
            f"min_cluster_size={options.min_cluster_size}")
    return PseudoLabels(scores, nearest, overlap, disjoint, clusters, labels, weights.astype(np.float32), p_wrong,
                        num_clusters, assigned, separation, uncertainty, timings)
