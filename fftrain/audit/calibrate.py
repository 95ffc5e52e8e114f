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
- intra (an image is not its class's person): the cosines of images to their own class centre. Label
  noise forms a lower mode; when a two-Weibull mixture finds two separate modes the genuine scores
  are those above its valley, else all of them. 'auto' is the cosine below which a fraction
  `--intra-frr` of the genuine scores lies. Its FAR: the fraction of the leak impostors (another
  person's image against a centre) that it would still accept as the class's own.

Sample sizes, as found, are recorded: a FAR below 1 / sample size cannot be resolved and is said so.
"""

from __future__ import annotations

import numpy as np
import torch

from fftrain.calibration.evt import FitError
from fftrain.calibration.modes import fit_two_modes
from fftrain.calibration.thresholds import AUTO, far_at, lower_threshold, upper_threshold

PAPER_INTRA, PAPER_INTER, PAPER_LEAK = 0.3, 0.7, 0.7
CHUNK = 2048
SCORES_PER_CHUNK = 1 << 24  # 64 MiB of float32 scores per block of the probe search


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


def intra_genuine(cos_centre: np.ndarray) -> tuple[np.ndarray, str]:
    """The genuine own-centre cosines: above the valley of a two-mode fit that finds two modes, else all."""
    defined = cos_centre[~np.isnan(cos_centre)].astype(np.float64)
    try:
        modes = fit_two_modes(defined)
    except FitError as e:
        return defined, f"no two-mode fit: {e}"
    if not modes.separated:
        return defined, f"all own-centre cosines; {modes.explain()}"
    return defined[defined > modes.valley], f"the upper mode; {modes.explain()}"


def calibrate(args, train, centres: np.ndarray, cos_centre: np.ndarray, inter_pairs_at) -> tuple[dict, dict]:
    """({'intra', 'inter', 'leak'}: Threshold, samples for the report). `inter_pairs_at(t)` gives the
    duplicate pairs the inter test finds at t (to leave a class's duplicates out of the leak impostors)."""
    has_images = train.class_counts > 0
    classes = np.flatnonzero(has_images)
    pair_scores = centre_pair_impostors(centres, classes, max_pairs=args.calibration_pairs, seed=args.seed)
    inter = upper_threshold("inter", args.inter_threshold, pair_scores, far=args.far, paper=PAPER_INTER,
                            statistic="cosine of two different classes' centres")
    groups = identity_groups(len(has_images), inter_pairs_at(inter.value))
    nearest = nearest_other_identity(train.embeddings, train.labels, centres, has_images, groups,
                                     probes=args.calibration_probes, seed=args.seed)
    leak = upper_threshold("leak", args.leak_threshold, nearest, far=args.far, paper=PAPER_LEAK,
                           statistic="training image vs its nearest other identity's centre")
    genuine, how = intra_genuine(cos_centre)
    intra = lower_threshold("intra", args.intra_threshold, genuine, frr=args.intra_frr, paper=PAPER_INTRA,
                            statistic="image vs its own class centre", how=how if args.intra_threshold == AUTO else "")
    samples = {"inter_impostor_pairs": int(pair_scores.size), "leak_impostor_images": int(nearest.size),
               "intra_genuine_images": int(genuine.size),
               "intra_accepts_other_identity": far_at(nearest, intra.value)}
    return {"intra": intra, "inter": inter, "leak": leak}, samples
