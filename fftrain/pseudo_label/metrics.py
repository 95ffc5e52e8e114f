"""Clustering quality against ground-truth identities: pairwise and BCubed precision / recall / F, NMI.

    m = clustering_scores(predicted, truth)   # {'pairwise': {...}, 'bcubed': {...}, 'nmi': ...}

Pairwise: every two samples in one predicted cluster are a predicted pair, every two of one
identity a true pair (scikit-learn's pair confusion matrix). BCubed: per sample, the share of its
cluster that is its identity (precision) and the share of its identity in its cluster (recall),
averaged over samples (Amigo et al. 2009). NMI: scikit-learn, arithmetic normalisation.
"""

from __future__ import annotations

import numpy as np


def _prf(p: float, r: float) -> dict:
    return {"precision": p, "recall": r, "f": 2 * p * r / (p + r) if p + r > 0 else 0.0}


def pairwise_scores(predicted, truth) -> dict:
    from sklearn.metrics.cluster import pair_confusion_matrix

    (_, fp), (fn, tp) = pair_confusion_matrix(np.asarray(truth), np.asarray(predicted))
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return _prf(float(p), float(r))


def bcubed_scores(predicted, truth) -> dict:
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(np.asarray(truth), np.asarray(predicted), sparse=True).tocoo()
    n = table.sum()
    cluster_sizes = np.asarray(table.sum(axis=0)).ravel()
    identity_sizes = np.asarray(table.sum(axis=1)).ravel()
    counts = table.data.astype(np.float64)
    p = float((counts ** 2 / cluster_sizes[table.col]).sum() / n)
    r = float((counts ** 2 / identity_sizes[table.row]).sum() / n)
    return _prf(p, r)


def clustering_scores(predicted, truth) -> dict:
    from sklearn.metrics import normalized_mutual_info_score

    predicted, truth = np.asarray(predicted), np.asarray(truth)
    return {"pairwise": pairwise_scores(predicted, truth), "bcubed": bcubed_scores(predicted, truth),
            "nmi": float(normalized_mutual_info_score(truth, predicted)),
            "num_clusters": int(len(np.unique(predicted))), "num_identities": int(len(np.unique(truth)))}


def singletons_for_dropped(labels: np.ndarray) -> np.ndarray:
    """Labels where each -1 (dropped) sample becomes its own cluster, for scoring."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    dropped = labels < 0
    base = labels.max() + 1 if (~dropped).any() else 0
    labels[dropped] = base + np.arange(int(dropped.sum()))
    return labels
