"""The audit's thresholds from the checkpoint's own scores, each from the statistic its test thresholds.

    choices = calibrate(args, train, centres, intra, class_dataset)   # {'intra', 'inter', 'leak'}: Threshold

- inter (two class centres are one person): impostors are the cosines between centres of two
  different classes (all pairs, or `calibration_pairs` random ones); 'auto' is the cosine at impostor
  FAR `--far` (per class pair), never below the paper's 0.7.
- leak (a verification image is a training identity): the test asks whether an image's *nearest*
  centre is above t, so its impostors are, for a sample of training images, the cosine to the nearest
  centre of another identity (its own class and the classes the inter test joins to it left out).
  FAR is then the rate at which an image of nobody in the training set is called leaked; 'auto' is
  the cosine at FAR `--far`, never below the paper's 0.7.
- Both impostor samples hold genuine matches (overlaps across datasets, duplicates, mislabeled
  images), often more than 1 in 10^4; so the rate is read from a family fitted to the sample's body
  (`fftrain.calibration.tails`: a normal for centre pairs, a Gumbel for the nearest-centre maximum),
  not from its empirical quantile, which would land on the matches. The sample's own rate is recorded
  beside it (`sample_far`).
- intra (an image is not its class's person): the cosines of images to their own class centre. An image
  filed under the wrong class scores like an image against another class's centre, so that sample
  (for the probe images, a random other identity's class of their own dataset) is the noise
  component's shape; 'auto' is the split of best estimated F1 between it and the genuine images
  (`fftrain.calibration.noise`); where no noise is found, the cosine below which a fraction
  `--intra-frr` of the own-centre cosines lies. Its FAR: the fraction of the leak impostors (another
  person's image against a centre) that it would still accept as the class's own.

Sample sizes, as found, are recorded: a FAR below 1 / sample size cannot be resolved and is said so.
"""

from __future__ import annotations

import numpy as np
import torch

from fftrain.calibration.evt import FitError
from fftrain.calibration.noise import fit_label_noise
from fftrain.calibration.tails import fit_body_tail
from fftrain.calibration.thresholds import AUTO, Threshold, far_at, frr_at, lower_threshold, upper_threshold

PAPER_INTRA, PAPER_INTER, PAPER_LEAK = 0.3, 0.7, 0.7
CHUNK = 2048
SCORES_PER_CHUNK = 1 << 24  # 64 MiB of float32 scores per block of the probe search
# Genuine matches among the impostors: duplicate class pairs are well under 0.5% of all pairs (fitted on
# the upper body, whose tail a normal underestimates: benchmarks/RESULTS.md, audit round 3); the images
# whose nearest other class is their own person (an overlap across datasets, a mislabel) can be 10-20%
# of a multi-dataset union, and the nearest-centre cosine is a maximum over classes (Gumbel domain).
INTER_TAIL = {"family": "gumbel_r", "body": (0.90, 0.995)}
LEAK_TAIL = {"family": "gumbel_r", "body": (0.05, 0.80)}


def centre_pair_impostors(centres: np.ndarray, classes: np.ndarray, *, max_pairs: int, seed: int) -> np.ndarray:
    """Cosines between centres of two different classes among `classes`: all pairs when they are at most
    `max_pairs`, else `max_pairs` random ones."""
    n = classes.size
    x = torch.from_numpy(np.ascontiguousarray(centres[classes], dtype=np.float32))
    if n * (n - 1) // 2 <= max_pairs:
        parts = []
        for start in range(0, n, CHUNK):
            sims = (x[start:start + CHUNK] @ x.T).numpy()
            above_diagonal = np.arange(n)[None, :] > (start + np.arange(sims.shape[0]))[:, None]
            parts.append(sims[above_diagonal].astype(np.float64))
        return np.concatenate(parts) if parts else np.zeros(0)
    rng = np.random.default_rng([seed, 1])
    a = rng.integers(0, n, max_pairs)
    b = (a + rng.integers(1, n, max_pairs)) % n  # never a
    return np.einsum("ij,ij->i", x[a].numpy(), x[b].numpy()).astype(np.float64)


def identity_groups(num_classes: int, pairs: np.ndarray) -> np.ndarray:
    """[C] group of each class: the connected components of the duplicate pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(num_classes, num_classes))
    return connected_components(graph, directed=False)[1]


def nearest_other_identity(embeddings, labels: np.ndarray, centres: np.ndarray, has_images: np.ndarray,
                           groups: np.ndarray, *, probes: int, seed: int) -> np.ndarray:
    """For up to `probes` random training images: the best cosine to a centre of another identity."""
    n = labels.size
    keys = np.sort(np.random.default_rng([seed, 2]).choice(n, min(n, probes), replace=False))
    c = torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32))
    empty = torch.from_numpy(~has_images)
    group_of = torch.from_numpy(groups)
    out = np.empty(keys.size)
    rows_per_chunk = max(1, min(CHUNK, SCORES_PER_CHUNK // max(1, len(centres))))  # bounds the [rows, C] scores
    for start in range(0, keys.size, rows_per_chunk):
        part = keys[start:start + rows_per_chunk]
        rows = torch.from_numpy(np.asarray(embeddings[part], dtype=np.float32))
        sims = rows @ c.T
        own = group_of[None, :] == group_of[torch.from_numpy(labels[part])][:, None]
        sims[own | empty[None, :]] = -2.0
        out[start:start + part.size] = sims.max(dim=1).values.numpy()
    return out


def other_class_scores(embeddings, labels: np.ndarray, centres: np.ndarray, class_dataset: np.ndarray,
                       has_images: np.ndarray, groups: np.ndarray, *, probes: int, seed: int) -> np.ndarray:
    """For up to `probes` random training images: the cosine to the centre of a random class of their own
    dataset that is another identity (all datasets' classes where the own dataset has no such class)."""
    n = labels.size
    rng = np.random.default_rng([seed, 3])
    keys = np.sort(rng.choice(n, min(n, probes), replace=False))
    own = labels[keys]
    other = np.full(keys.size, -1, np.int64)
    for d in np.unique(class_dataset[own]):
        _draw_other_identity(other, np.flatnonzero(class_dataset[own] == d), own,
                             np.flatnonzero(has_images & (class_dataset == d)), groups, rng)
    _draw_other_identity(other, np.flatnonzero(other < 0), own, np.flatnonzero(has_images), groups, rng)
    keep = other >= 0
    rows = np.asarray(embeddings[keys[keep]], dtype=np.float32)
    return np.einsum("ij,ij->i", rows, centres[other[keep]].astype(np.float32)).astype(np.float64)


def _draw_other_identity(other: np.ndarray, todo: np.ndarray, own: np.ndarray, pool: np.ndarray, groups: np.ndarray,
                         rng: np.random.Generator) -> None:
    """other[todo] = a random class of `pool` that is not the probe's own identity (up to 100 redraws;
    a probe left without one stays -1)."""
    for _ in range(100):
        if todo.size == 0 or pool.size == 0:
            return
        drawn = pool[rng.integers(0, pool.size, todo.size)]
        ok = groups[drawn] != groups[own[todo]]
        other[todo[ok]] = drawn[ok]
        todo = todo[~ok]


def intra_threshold(requested, cos_centre: np.ndarray, noise_scores: np.ndarray, *, frr: float) -> Threshold:
    """The intra (own-centre) threshold. 'auto': the split of best estimated F1 between the genuine
    images and label noise shaped like `noise_scores` (`fftrain.calibration.noise`), with the genuine
    FRR there as estimated; where no noise is found, the cosine below which a fraction `frr` of all
    own-centre cosines lies."""
    defined = cos_centre[~np.isnan(cos_centre)].astype(np.float64)
    statistic = "image vs its own class centre"

    def lower_tail(how: str = "") -> Threshold:
        return lower_threshold("intra", requested, defined, frr=frr, paper=PAPER_INTRA, statistic=statistic, how=how)

    if requested != AUTO or defined.size == 0:
        return lower_tail()
    try:
        noise = fit_label_noise(defined, noise_scores)
    except FitError as e:
        return lower_tail(str(e))
    t = noise.threshold
    genuine_paper = max(0.0, frr_at(defined, PAPER_INTRA) - noise.weight * frr_at(noise_scores, PAPER_INTRA))
    return Threshold("intra", t, f"auto: {noise.explain()}", statistic, int(defined.size), noise.genuine_frr,
                     PAPER_INTRA, genuine_paper / max(1e-12, 1 - noise.weight), None, rate="frr",
                     sample_far=frr_at(defined, t), model=noise.to_dict())


def _tail(scores: np.ndarray, *, family: str, body: tuple[float, float]):
    """The impostor tail fitted to the sample's body; None (the empirical quantile) when it cannot be fitted."""
    try:
        return fit_body_tail(scores, family=family, body=body)
    except FitError:
        return None


def calibrate(args, train, centres: np.ndarray, cos_centre: np.ndarray, class_dataset: np.ndarray,
              inter_pairs_at) -> tuple[dict, dict]:
    """({'intra', 'inter', 'leak'}: Threshold, samples for the report). `inter_pairs_at(t)` gives the
    duplicate pairs the inter test finds at t (to leave a class's duplicates out of the leak impostors
    and the intra noise sample)."""
    has_images = train.class_counts > 0
    classes = np.flatnonzero(has_images)
    pair_scores = centre_pair_impostors(centres, classes, max_pairs=args.calibration_pairs, seed=args.seed)
    inter = upper_threshold("inter", args.inter_threshold, pair_scores, far=args.far, paper=PAPER_INTER,
                            statistic="cosine of two different classes' centres",
                            tail=_tail(pair_scores, **INTER_TAIL))
    groups = identity_groups(len(has_images), inter_pairs_at(inter.value))
    nearest = nearest_other_identity(train.embeddings, train.labels, centres, has_images, groups,
                                     probes=args.calibration_probes, seed=args.seed)
    leak = upper_threshold("leak", args.leak_threshold, nearest, far=args.far, paper=PAPER_LEAK,
                           statistic="training image vs its nearest other identity's centre",
                           tail=_tail(nearest, **LEAK_TAIL))
    other = other_class_scores(train.embeddings, train.labels, centres, class_dataset, has_images, groups,
                               probes=args.calibration_probes, seed=args.seed)
    intra = intra_threshold(args.intra_threshold, cos_centre, other, frr=args.intra_frr)
    samples = {"inter_impostor_pairs": int(pair_scores.size), "leak_impostor_images": int(nearest.size),
               "intra_noise_images": int(other.size),
               "intra_images": int(intra.samples),
               "intra_accepts_other_identity": far_at(nearest, intra.value)}
    return {"intra": intra, "inter": inter, "leak": leak}, samples
