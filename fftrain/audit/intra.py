"""Class centres and intra-class noise: each image's cosine to its own class's centre.

The centre of a class is the mean of its images' L2-normalised embeddings (the cosine to it is
taken against its direction). In a class of at most `loo_max_images` images an image would pull
its own centre towards itself, so there it is compared with the mean of the *other* images
(leave-one-out; a class of one image has no cosine). The checkpoint's class proxies are a
second view: the cosine of each image to the proxy of its fused class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

HIST_BINS = np.linspace(-1.0, 1.0, 101)


def class_centres(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[C, D] float32 unit centres (zero rows for classes without images)."""
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


@dataclass
class IntraClass:
    cos_centre: np.ndarray
    """[N] float32 cosine of each image to its class centre (leave-one-out where used); NaN: class of one."""
    cos_proxy: np.ndarray
    """[N] float32 cosine of each image to its fused class's proxy."""
    leave_one_out: np.ndarray
    """[N] bool: the centre left this image out."""
    outliers: np.ndarray
    """int64 keys with cos_centre < threshold, ascending."""
    threshold: float


def intra_class(embeddings: np.ndarray, labels: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                proxies: np.ndarray, label_map: np.ndarray, *, threshold: float, loo_max_images: int,
                chunk: int = 1 << 14) -> IntraClass:
    """embeddings [N, D] unit rows (any float dtype, e.g. a float16 memmap), labels [N] source classes,
    sums/counts the per-class sums of those rows, proxies [C_fused, D] unit rows, label_map [C_src]."""
    n = embeddings.shape[0]
    cos_centre = np.empty(n, np.float32)
    cos_proxy = np.empty(n, np.float32)
    loo = np.empty(n, bool)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        e = np.asarray(embeddings[rows], dtype=np.float64)
        c = labels[rows]
        own = counts[c] <= loo_max_images
        centre = sums[c] - np.where(own[:, None], e, 0.0)
        norm = np.linalg.norm(centre, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.einsum("ij,ij->i", e, centre) / norm
        cos_centre[rows] = np.where(own & (counts[c] <= 1) | (norm <= 1e-9), np.nan, cos)
        cos_proxy[rows] = np.einsum("ij,ij->i", e, proxies[label_map[c]])
        loo[rows] = own
    with np.errstate(invalid="ignore"):
        outliers = np.flatnonzero(cos_centre < threshold).astype(np.int64)
    return IntraClass(cos_centre, cos_proxy, loo, outliers, threshold)


def with_threshold(intra: IntraClass, threshold: float) -> IntraClass:
    """The same cosines with the outliers below another threshold."""
    with np.errstate(invalid="ignore"):
        outliers = np.flatnonzero(intra.cos_centre < threshold).astype(np.int64)
    return replace(intra, outliers=outliers, threshold=threshold)


def per_dataset_summary(intra: IntraClass, image_dataset: np.ndarray, names: list[str]) -> list[dict]:
    """Per dataset: images, outliers, noise rate, quantiles and histogram of the centre cosines."""
    out = []
    for d, name in enumerate(names):
        mine = image_dataset == d
        values = intra.cos_centre[mine]
        defined = values[~np.isnan(values)]
        outliers = int(np.count_nonzero(defined < intra.threshold))
        quantiles = np.quantile(defined, [0.01, 0.05, 0.5, 0.95]).tolist() if defined.size else [None] * 4
        out.append({
            "dataset": name, "images": int(mine.sum()), "images_with_cosine": int(defined.size),
            "outliers": outliers, "noise_rate": outliers / defined.size if defined.size else None,
            "cos_centre_q01_q05_q50_q95": quantiles,
            "cos_proxy_median": float(np.median(intra.cos_proxy[mine])) if mine.any() else None,
            "hist_counts": np.histogram(defined, bins=HIST_BINS)[0].tolist(),
        })
    return out
