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

from fftrain.calibration.evt import FitError
from fftrain.calibration.modes import from_mixture
from fftrain.calibration.thresholds import AUTO, Threshold
from fftrain.errors import UserError
from fftrain.pseudo_label.calibrate import cluster_purity, edge_threshold, reference_pairs
from fftrain.pseudo_label.clustering import (BACKENDS, DEFAULT_RESOLUTION, DEFAULT_THRESHOLDS, KNN_INDEXES, cluster,
                                             drop_small, knn_graph)
from fftrain.pseudo_label.separation import Separation, max_cosine, separate_overlap
from fftrain.pseudo_label.uncertainty import Uncertainty, cluster_margins, fit_uncertainty

OVERLAP_MODES = ("auto", "none", "all")
OVERLAPPING = ("discard", "assign")
RULES = ("weibull", "otsu")
DEFAULT_EDGE_FAR = 1e-4
DEFAULT_MIN_PURITY = 0.5
REFERENCE_PAIRS = 200_000


class PseudoLabelError(UserError, ValueError):
    """Unlabeled data the method cannot work on (empty, one mode only, nothing left to cluster)."""


class OneModeError(PseudoLabelError):
    """The max-cosine scores show one mode: the separation cannot say which images are labeled identities."""


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
    threshold: float | str | None = AUTO
    """kNN edges of cosine at or below this are dropped before clustering; 'auto': the cosine at impostor FAR
    `edge_far` on the reference pairs (pseudo_label/calibrate.py), never below the backend's default; None: the
    backend's default"""
    edge_far: float = DEFAULT_EDGE_FAR
    min_purity: float = DEFAULT_MIN_PURITY
    """clusters whose estimated pairwise precision is below this are reported, not written"""
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
        if not 0 < self.edge_far < 1 or not 0 <= self.min_purity <= 1:
            raise ValueError(f"edge_far={self.edge_far} must lie in (0, 1), min_purity={self.min_purity} in [0, 1]")


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
    edge: Threshold | None = None
    """the clustering's edge threshold, how it was chosen and its impostor FAR"""
    low_purity: list = field(default_factory=list)
    """clusters not written: {'members', 'size', 'purity'} each"""
    purity: np.ndarray | None = None
    """[num_clusters] estimated pairwise precision of each written cluster"""

    @property
    def num_classes(self) -> int:
        return self.num_clusters + len(self.assigned_classes)


def ashman_d(separation: Separation) -> float:
    """Ashman's D between the two fitted components; above 2 the mixture is cleanly bimodal."""
    return from_mixture(separation.mixture, separation.otsu_threshold).ashman_d


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
    modes = from_mixture(separation.mixture, separation.otsu_threshold)
    if not modes.separated:
        raise OneModeError(
            f"the max-cosine scores have one mode, not two ({modes.explain()}; median {np.median(scores):.3f}): "
            "either no unlabeled identity is a labeled one, or all are, or the checkpoint does not yet tell its "
            "labeled identities from others (an early checkpoint: try a later one); say which with --overlap none "
            "(cluster everything) or --overlap all")
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
    pairs = reference_pairs(embeddings, overlap, nearest, max_pairs=REFERENCE_PAIRS, seed=options.seed)
    edge = edge_threshold(DEFAULT_THRESHOLDS[options.backend] if options.threshold is None else options.threshold, pairs,
                          far=options.edge_far, default=DEFAULT_THRESHOLDS[options.backend])
    low_purity, purity = [], None
    if len(disjoint_ids) >= 2:
        graph = knn_graph(embeddings[disjoint_ids], options.knn_k, index=options.knn_index, seed=options.seed)
        timings["knn_s"] = graph.seconds
        started = time.perf_counter()
        found = cluster(graph, backend=options.backend, threshold=edge.value,
                        resolution=options.resolution, seed=options.seed)
        timings["cluster_s"] = time.perf_counter() - started
        clusters[disjoint_ids] = drop_small(found, options.min_cluster_size)
        clusters, purity, low_purity = _drop_impure(embeddings, clusters, edge.value, pairs.tar(edge.value),
                                                    options.min_purity, options.seed)
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
                        num_clusters, assigned, separation, uncertainty, timings, edge, low_purity, purity)


def _drop_impure(embeddings, clusters: np.ndarray, threshold: float, tar: float | None, min_purity: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(clusters with the impure ones set to -1 and the rest renumbered, purity of the kept ones, the dropped)."""
    purity = cluster_purity(embeddings, clusters, threshold, tar, seed=seed)
    impure = np.flatnonzero(purity < min_purity)  # NaN (one member) is kept
    dropped = [{"members": np.flatnonzero(clusters == c).tolist(), "size": int((clusters == c).sum()),
                "purity": float(purity[c])} for c in impure.tolist()]
    if not impure.size:
        return clusters, purity, dropped
    keep = np.ones(len(purity), bool)
    keep[impure] = False
    new_id = np.full(len(purity), -1, dtype=np.int64)
    new_id[keep] = np.arange(int(keep.sum()))
    return np.where(clusters >= 0, new_id[np.maximum(clusters, 0)], -1), purity[keep], dropped
