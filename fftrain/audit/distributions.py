"""Per dataset: genuine and impostor similarity distributions and their equal error rate.

Genuine pairs are two different images of one class, impostor pairs two images of two classes of
the same dataset, both drawn uniformly over images with a fixed seed; `pairs` of each per dataset
(the sample size is stated in the report). The EER is the point where the fraction of impostor
pairs at or above a threshold equals the fraction of genuine pairs below it, over all thresholds
(written here rather than taken from scikit-learn, which the project does not otherwise need: a
sort and a search).
"""

from __future__ import annotations

import numpy as np

from fftrain.audit.intra import HIST_BINS


def _pair_cos(embeddings: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    order = np.argsort(np.concatenate([a, b]), kind="stable")  # memmap reads in key order
    keys = np.concatenate([a, b])[order]
    rows = np.empty((keys.size, embeddings.shape[1]), np.float32)
    rows[order] = np.asarray(embeddings[keys], dtype=np.float32)
    return np.einsum("ij,ij->i", rows[:a.size], rows[a.size:])


def sample_pairs(labels: np.ndarray, image_ids: np.ndarray, pairs: int, rng: np.random.Generator):
    """(genuine (a, b), impostor (a, b)) keys among `image_ids`; either may come back empty."""
    lab = labels[image_ids]
    order = np.argsort(lab, kind="stable")
    sorted_ids, sorted_lab = image_ids[order], lab[order]
    starts = np.searchsorted(sorted_lab, sorted_lab, side="left")
    sizes = np.searchsorted(sorted_lab, sorted_lab, side="right") - starts
    eligible = np.flatnonzero(sizes >= 2)
    genuine = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if eligible.size:
        i = rng.choice(eligible, size=pairs)
        shift = 1 + (rng.random(pairs) * (sizes[i] - 1)).astype(np.int64)
        j = starts[i] + (i - starts[i] + shift) % sizes[i]
        genuine = (sorted_ids[i], sorted_ids[j])
    impostor = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if np.unique(lab).size >= 2:
        a, b = rng.choice(image_ids, size=pairs), rng.choice(image_ids, size=pairs)
        for _ in range(100):  # redraw the pairs that landed in one class
            same = labels[a] == labels[b]
            if not same.any():
                break
            b[same] = rng.choice(image_ids, size=int(same.sum()))
        keep = labels[a] != labels[b]
        impostor = (a[keep], b[keep])
    return genuine, impostor


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    """(EER, threshold): at threshold t, FAR = P(impostor >= t), FRR = P(genuine < t); the EER is their
    mean at the t (among all scores) where they are closest."""
    if genuine.size == 0 or impostor.size == 0:
        return None, None
    g, i = np.sort(genuine), np.sort(impostor)
    t = np.unique(np.concatenate([g, i]))
    frr = np.searchsorted(g, t, side="left") / g.size
    far = 1.0 - np.searchsorted(i, t, side="left") / i.size
    best = int(np.argmin(np.abs(far - frr)))
    return float((far[best] + frr[best]) / 2), float(t[best])


def dataset_distributions(embeddings: np.ndarray, labels: np.ndarray, image_dataset: np.ndarray, names: list[str],
                          *, pairs: int, seed: int) -> list[dict]:
    out = []
    for d, name in enumerate(names):
        rng = np.random.default_rng([seed, d])
        ids = np.flatnonzero(image_dataset == d)
        (ga, gb), (ia, ib) = sample_pairs(labels, ids, pairs, rng) if ids.size else ((np.zeros(0, int),) * 2,) * 2
        genuine = _pair_cos(embeddings, ga, gb) if ga.size else np.zeros(0, np.float32)
        impostor = _pair_cos(embeddings, ia, ib) if ia.size else np.zeros(0, np.float32)
        eer, at = equal_error_rate(genuine, impostor)
        out.append({"dataset": name, "genuine_pairs": int(genuine.size), "impostor_pairs": int(impostor.size),
                    "eer": eer, "eer_threshold": at,
                    "genuine_mean": float(genuine.mean()) if genuine.size else None,
                    "impostor_mean": float(impostor.mean()) if impostor.size else None,
                    "genuine_hist": np.histogram(genuine, bins=HIST_BINS)[0].tolist(),
                    "impostor_hist": np.histogram(impostor, bins=HIST_BINS)[0].tolist()})
    return out
