"""Identity leakage: verification images whose person is a training class.

Each verification image's nearest training class centre (exact inner-product search,
`fftrain.search.top_k`); an image above the threshold is leaked, a pair is leaked when either of
its images is. The verification accuracy (insightface's 10-fold protocol, as `fftrain eval`) is
recomputed on the pairs that are not leaked, beside the full-set figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fftrain.evaluation.metrics import N_FOLDS, verification_metrics
from fftrain.search import top_k


def nearest_centres(queries: np.ndarray, centres: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(similarities [Q, k] float32, class ids [Q, k] int64) of the k best centres per unit query row."""
    sims, ids = top_k(queries, centres, min(k, centres.shape[0]))
    return sims.numpy(), ids.numpy()


@dataclass
class Leakage:
    name: str
    nearest_class: np.ndarray
    """[2N] int64 nearest training class (source class) of each image."""
    nearest_cos: np.ndarray
    """[2N] float32 its cosine."""
    leaked_images: np.ndarray
    """[2N] bool."""
    leaked_pairs: np.ndarray
    """[N] bool."""
    issame: np.ndarray
    """[N] bool."""
    full: dict
    unleaked: dict | None
    """Metrics on the pairs not leaked; None when too few remain (see notes)."""
    notes: list[str] = field(default_factory=list)


def _metrics(embeddings: np.ndarray, issame: np.ndarray) -> dict:
    result = verification_metrics(embeddings, issame).as_dict()
    return {k: result[k] for k in ("num_pairs", "accuracy", "std", "best_threshold")}


def leakage(name: str, embeddings: np.ndarray, issame: np.ndarray, centres: np.ndarray, *,
            threshold: float, n_folds: int = N_FOLDS) -> Leakage:
    """embeddings [2N, D] unit rows (pair i = rows 2i, 2i+1), issame [N], centres [C, D] unit rows."""
    issame = np.asarray(issame, dtype=bool)
    sims, ids = nearest_centres(embeddings, centres, 1)
    leaked = sims[:, 0] > threshold
    pair_leaked = leaked[0::2] | leaked[1::2]
    keep = ~pair_leaked
    notes = []
    unleaked = None
    kept_same = issame[keep]
    if keep.sum() < n_folds or kept_same.all() or not kept_same.any():
        notes.append(f"{name}: {int(keep.sum())} pairs are not leaked ({int(kept_same.sum())} positive); the "
                     f"{n_folds}-fold accuracy needs at least {n_folds} pairs of both kinds, so it is not reported")
    else:
        rows = embeddings.reshape(-1, 2, embeddings.shape[1])[keep].reshape(-1, embeddings.shape[1])
        unleaked = _metrics(rows, kept_same)
    return Leakage(name, ids[:, 0], sims[:, 0], leaked, pair_leaked, issame, _metrics(embeddings, issame), unleaked,
                   notes)


def per_dataset_counts(result: Leakage, class_dataset: np.ndarray, names: list[str]) -> list[dict]:
    """Leaked images, leaked pairs and leaked training classes, by the dataset of the nearest class."""
    dataset_of_image = class_dataset[result.nearest_class]
    out = []
    for d, name in enumerate(names):
        image_hit = result.leaked_images & (dataset_of_image == d)
        pair_hit = image_hit[0::2] | image_hit[1::2]
        out.append({"dataset": name, "leaked_images": int(image_hit.sum()), "leaked_pairs": int(pair_hit.sum()),
                    "leaked_classes": int(np.unique(result.nearest_class[image_hit]).size)})
    return out
