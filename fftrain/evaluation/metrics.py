"""Verification metrics on pair scores: insightface's 10-fold accuracy, and TAR at a FAR.

    emb = l2_normalize(emb_plain + emb_flipped)             # [2N, D], pair i = rows 2i, 2i+1
    out = verification_metrics(emb, issame)                 # accuracy, std, tar_far_1e-3, ...
    folds = kfold_accuracy(cosine, issame, higher_is_same=True)   # any "higher is more similar" score

Pure numpy; no sklearn. Protocol (insightface `recognition/arcface_torch/eval/verification.py`,
`evaluate` / `calculate_roc`), reproduced number for number on the same embeddings:

- embeddings are float64, L2-normalised rows (zero rows left as they are, as
  `sklearn.preprocessing.normalize` does); the pair score is the squared L2 distance
  `sum((e1 - e2)**2)`; a pair is predicted "same" when `dist < threshold` (strict).
- thresholds `np.arange(0, 4, 0.01)`; 10 contiguous folds split as sklearn's
  `KFold(n_splits=10, shuffle=False)` splits them (the first `n % 10` folds one pair larger);
  for each fold the threshold with the best accuracy on the other nine folds (the first, i.e.
  smallest, on ties, as `np.argmax`) is applied to the fold; reported: the mean and the
  population standard deviation (`np.std`) of the 10 fold accuracies.

TAR at FAR (`tar_at_far`) is *not* insightface's `calculate_val` (which interpolates the FAR of a
threshold grid per fold with `scipy.interpolate.interp1d`, fails on the repeated FAR values a
good model produces, and only ever looks at FAR 1e-3). Here it is the exact ROC point over all
pairs: with `n_neg` negative pairs, at most `m = floor(far * n_neg)` of them may be accepted; the
threshold is the (m+1)-th highest negative score, a pair is accepted when its score is strictly
above it, and TAR is the fraction of positive pairs accepted. The achieved FAR is <= `far` (less
when negative scores tie at the threshold). When `m < 1` (fewer than `1/far` negatives: LFW's
3000 negatives cannot measure FAR 1e-4) the point is not measurable and TAR is reported as None
with a note, never as the FAR=0 number it would silently become.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

N_FOLDS = 10
"""insightface's number of folds."""

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
"""insightface's threshold grid on the squared L2 distance of unit vectors (range [0, 4])."""

DEFAULT_FARS = (1e-3, 1e-4)
"""The FAR points reported by `verification_metrics`."""


def far_key(far: float) -> str:
    """Result key of a FAR point: 1e-3 -> 'tar_far_1e-3'."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"tar_far_{mantissa}e{int(exponent)}"


def kfold_indices(n: int, n_folds: int = N_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of `n` items in `n_folds` contiguous folds.

    The same split as sklearn's `KFold(n_splits=n_folds, shuffle=False).split(range(n))`: fold
    sizes are `n // n_folds`, the first `n % n_folds` of them one larger.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds={n_folds}: need at least 2 folds")
    if n < n_folds:
        raise ValueError(f"{n} pairs cannot be split into {n_folds} folds (need at least {n_folds})")
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    indices = np.arange(n)
    folds = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        test = indices[start:stop]
        train = np.concatenate([indices[:start], indices[stop:]])
        folds.append((train, test))
    return folds


def l2_normalize(x) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64; all-zero rows stay zero (sklearn's `normalize`)."""
    x = np.array(x, dtype=np.float64)  # a copy
    if x.ndim != 2:
        raise ValueError(f"expected a [N, D] array of embeddings, got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    x /= norms[:, np.newaxis]
    return x


def split_pairs(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """insightface's pair layout: rows 2i and 2i+1 are pair i."""
    if embeddings.shape[0] % 2:
        raise ValueError(f"{embeddings.shape[0]} embeddings: pairs need an even number")
    return embeddings[0::2], embeddings[1::2]


def squared_l2(e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """Per-pair squared L2 distance, computed as insightface computes it."""
    return np.sum(np.square(np.subtract(e1, e2)), 1)


def _as_labels(issame, n: int) -> np.ndarray:
    labels = np.asarray(issame, dtype=bool).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"{n} scores but {labels.shape[0]} issame labels")
    return labels


def threshold_accuracies(scores: np.ndarray, issame: np.ndarray, thresholds: np.ndarray, *,
                         higher_is_same: bool) -> np.ndarray:
    """Accuracy of every threshold, exactly as the elementwise comparison would count it.

    `higher_is_same=True`: "same" iff `score > t` (similarities); False: iff `score < t`
    (distances, insightface's rule). Counted with sorted scores and `searchsorted`, so a grid of
    T thresholds over N pairs costs O((N + T) log N), not O(N * T).
    """
    scores = np.asarray(scores, dtype=np.float64)
    issame = _as_labels(issame, scores.shape[0])
    thresholds = np.asarray(thresholds, dtype=np.float64)
    pos = np.sort(scores[issame])
    neg = np.sort(scores[~issame])
    if higher_is_same:
        true_accept = pos.size - np.searchsorted(pos, thresholds, side="right")  # pos > t
        true_reject = np.searchsorted(neg, thresholds, side="right")             # neg <= t
    else:
        true_accept = np.searchsorted(pos, thresholds, side="left")              # pos < t
        true_reject = neg.size - np.searchsorted(neg, thresholds, side="left")   # neg >= t
    # int / int, as insightface's float(tp + tn) / dist.size: identical floats, identical ties.
    return (true_accept + true_reject) / scores.shape[0]


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Every distinct way to cut `scores`: midpoints between sorted distinct values, plus one
    threshold below all of them and one above (for scores with no natural grid, e.g. DAO)."""
    values = np.unique(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise ValueError("no scores to place thresholds between")
    return np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1.0]])


@dataclass
class FoldResult:
    """Per-fold results of the k-fold best-threshold protocol."""

    accuracies: np.ndarray
    """Accuracy on each test fold, with the threshold picked on the other folds."""
    thresholds: np.ndarray
    """The threshold picked for each fold."""

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Population standard deviation over folds (`np.std`, ddof=0, as insightface)."""
        return float(np.std(self.accuracies))

    @property
    def threshold(self) -> float:
        """Mean of the per-fold thresholds."""
        return float(np.mean(self.thresholds))


def kfold_accuracy(scores, issame, thresholds=None, *, higher_is_same: bool = True,
                   n_folds: int = N_FOLDS) -> FoldResult:
    """insightface's k-fold best-threshold accuracy on any pair score.

    `thresholds`: a fixed grid (insightface: `ACCURACY_THRESHOLDS` on squared L2 distances,
    `higher_is_same=False`), or None for every distinct cut of each training fold's scores
    (`candidate_thresholds`), the choice for scores without a natural scale.
    The best training threshold is the first maximum (`np.argmax`), as in insightface.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    issame = _as_labels(issame, scores.shape[0])
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int(np.sum(~np.isfinite(scores)))} of {scores.size} scores are not finite")
    accuracies = np.zeros(n_folds)
    picked = np.zeros(n_folds)
    for fold, (train, test) in enumerate(kfold_indices(scores.shape[0], n_folds)):
        grid = candidate_thresholds(scores[train]) if thresholds is None else np.asarray(thresholds, np.float64)
        train_acc = threshold_accuracies(scores[train], issame[train], grid, higher_is_same=higher_is_same)
        best = grid[int(np.argmax(train_acc))]
        picked[fold] = best
        accuracies[fold] = threshold_accuracies(scores[test], issame[test], np.array([best]),
                                                higher_is_same=higher_is_same)[0]
    return FoldResult(accuracies=accuracies, thresholds=picked)


@dataclass
class TarResult:
    """One ROC point: the TAR at a target FAR, or why it cannot be measured."""

    far: float
    """The target false accept rate."""
    tar: float | None
    """Fraction of positive pairs accepted; None when not measurable (see `note`)."""
    threshold: float | None = None
    """Accept iff score > threshold (for similarities)."""
    achieved_far: float | None = None
    """The false accept rate at `threshold` (<= `far`)."""
    num_negatives: int = 0
    note: str | None = None


def tar_at_far(scores, issame, far: float, *, higher_is_same: bool = True) -> TarResult:
    """TAR at `far` over all pairs, from the sorted negative scores (see the module doc)."""
    if not 0.0 < far <= 1.0:
        raise ValueError(f"far={far}: expected a rate in (0, 1]")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    issame = _as_labels(issame, scores.shape[0])
    if not higher_is_same:
        scores = -scores
    pos = scores[issame]
    neg = np.sort(scores[~issame])[::-1]  # highest first
    n_neg = int(neg.size)
    # The tiny relative slack keeps e.g. 1e-3 * 3000 = 3.0000000000000004 or 2.9999999999999996 at 3.
    allowed = int(math.floor(far * n_neg * (1 + 1e-9)))
    if pos.size == 0:
        return TarResult(far, None, num_negatives=n_neg, note=f"TAR@FAR={far:g} not measurable: no positive pairs")
    if allowed < 1:
        needed = int(math.ceil(1.0 / far - 1e-9))
        return TarResult(far, None, num_negatives=n_neg,
                         note=f"TAR@FAR={far:g} not measurable: {n_neg} negative pairs, needs >= {needed}")
    threshold = float(neg[allowed]) if allowed < n_neg else -math.inf
    tar = float(np.mean(pos > threshold))
    achieved = float(np.mean(neg > threshold))
    return TarResult(far, tar, threshold=threshold if higher_is_same else -threshold,
                     achieved_far=achieved, num_negatives=n_neg)


@dataclass
class VerificationResult:
    """What `verification_metrics` measures on one pair set."""

    num_pairs: int
    accuracy: float
    std: float
    best_threshold: float
    """Mean over folds of the picked squared-L2 threshold (cosine = 1 - threshold / 2)."""
    fold_accuracies: list[float]
    tars: dict[float, TarResult] = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"num_pairs": self.num_pairs, "accuracy": self.accuracy, "std": self.std,
               "best_threshold": self.best_threshold}
        notes = []
        for far, point in self.tars.items():
            out[far_key(far)] = point.tar
            if point.note:
                notes.append(point.note)
        out["fold_accuracies"] = list(self.fold_accuracies)
        out["notes"] = notes
        return out


def verification_metrics(embeddings, issame, *, n_folds: int = N_FOLDS,
                         fars=DEFAULT_FARS) -> VerificationResult:
    """insightface's accuracy ± std and TAR@FAR on flip-summed embeddings [2N, D] (pair i = rows
    2i, 2i+1); the embeddings are L2-normalised here (float64) as insightface does."""
    embeddings = l2_normalize(embeddings)
    e1, e2 = split_pairs(embeddings)
    issame = _as_labels(issame, e1.shape[0])
    dist = squared_l2(e1, e2)
    folds = kfold_accuracy(dist, issame, ACCURACY_THRESHOLDS, higher_is_same=False, n_folds=n_folds)
    cosine = np.einsum("ij,ij->i", e1, e2)
    tars = {far: tar_at_far(cosine, issame, far) for far in fars}
    return VerificationResult(num_pairs=int(e1.shape[0]), accuracy=folds.accuracy, std=folds.std,
                              best_threshold=folds.threshold, fold_accuracies=folds.accuracies.tolist(),
                              tars=tars)
