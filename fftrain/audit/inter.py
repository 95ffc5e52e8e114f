"""Inter-class noise: classes whose centres say they are one person.

Two exact kNN searches over the unit class centres with the fusion step's backends
(`fftrain.fusion.knn.distributed_knn`, one process): one inside each dataset (its own classes
only) and one across datasets (a class's neighbours from other datasets only, the search the
fusion step runs). Pairs above the threshold from both are joined into components with the
fusion step's union-find (`fftrain.fusion.components.build_plan`, same-dataset pairs allowed),
and counted per pair of datasets.

`fusion_twin` is the fusion step itself on any set of class vectors: on the checkpoint's
proxies, with the same T1, k, guards and backend, it gives what `fftrain fuse --dry-run` gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fftrain.config import FusionConfig
from fftrain.fusion.components import FusionPlan, build_plan, candidate_pairs, dedupe_pairs
from fftrain.fusion.knn import distributed_knn
from fftrain.fusion.run import plan_fusion


def _knn(vectors: np.ndarray, k: int, backend: str, groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    return distributed_knn(x, k, None, backend=backend, groups=None if groups is None else torch.from_numpy(groups))


def within_dataset_pairs(centres: np.ndarray, class_dataset: np.ndarray, *, threshold: float, knn_k: int,
                         backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b, global class ids) of one dataset with cosine > threshold, and their cosines."""
    pairs, cos = [], []
    for d in np.unique(class_dataset):
        rows = np.flatnonzero(class_dataset == d)
        if rows.size < 2:
            continue
        sims, ids = _knn(centres[rows], min(knn_k, rows.size - 1), backend)
        ids = ids.numpy()
        # the search numbers this dataset's rows 0..n-1; its hits are mapped back to global class ids
        global_ids = np.where(ids >= 0, rows[np.maximum(ids, 0)], -1)
        p, c = _pairs_from_hits(sims.numpy(), global_ids, rows, threshold)
        pairs.append(p)
        cos.append(c)
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return dedupe_pairs(np.concatenate(pairs), np.concatenate(cos))


def _pairs_from_hits(sims: np.ndarray, ids: np.ndarray, query_ids: np.ndarray, threshold: float):
    q = np.broadcast_to(query_ids[:, None], ids.shape)
    keep = (ids >= 0) & (sims > threshold) & (ids != q)
    a, b = q[keep], ids[keep]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)
    return pairs.reshape(-1, 2), sims[keep].astype(np.float32)


def across_dataset_pairs(centres: np.ndarray, class_dataset: np.ndarray, *, threshold: float, knn_k: int,
                         backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of classes of different datasets with cosine > threshold (the fusion step's search)."""
    sims, ids = _knn(centres, knn_k, backend, groups=class_dataset)
    return dedupe_pairs(*candidate_pairs(sims, ids, 0, class_dataset, threshold))


@dataclass
class InterClass:
    pairs: np.ndarray
    """[P, 2] int64 source classes a < b, within and across datasets, sorted."""
    cos: np.ndarray
    within: np.ndarray
    """[P] bool: both classes in one dataset."""
    plan: FusionPlan
    """Components of all pairs (same-dataset allowed), with the max-component guard."""
    counts: np.ndarray
    """[K, K] int64 pairs per (dataset, dataset), symmetric; the diagonal is within one dataset."""
    threshold: float


def inter_class(centres: np.ndarray, class_dataset: np.ndarray, *, threshold: float, knn_k: int,
                max_component: int, backend: str) -> InterClass:
    pw, cw = within_dataset_pairs(centres, class_dataset, threshold=threshold, knn_k=knn_k, backend=backend)
    pa, ca = across_dataset_pairs(centres, class_dataset, threshold=threshold, knn_k=knn_k, backend=backend)
    pairs, cos = dedupe_pairs(np.concatenate([pw, pa]), np.concatenate([cw, ca]))
    plan = build_plan(pairs, cos, class_dataset=class_dataset, max_component=max_component, allow_same_dataset=True)
    k = int(class_dataset.max()) + 1
    counts = np.zeros((k, k), np.int64)
    da, db = class_dataset[pairs[:, 0]], class_dataset[pairs[:, 1]]
    np.add.at(counts, (da, db), 1)
    counts = counts + counts.T - np.diag(np.diag(counts))
    return InterClass(pairs, cos, da == db, plan, counts, threshold)


def fusion_twin(vectors: np.ndarray, class_dataset: np.ndarray, label_map, config: FusionConfig) -> FusionPlan:
    """The fusion step's merge plan (`fftrain.fusion.plan_fusion`, steps 1-4) on one process."""
    vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    return plan_fusion(vectors, class_dataset=class_dataset, label_map=label_map, config=config).plan
