"""A feature-level planted world: class proxies and unlabeled embeddings with known identities.

    world = planted_world(num_labeled=1000, num_unlabeled_ids=500, overlap=0.25, seed=0)
    world.embeddings, world.proxies, world.identity, world.overlap

What a trained network would produce, without training one: identities are unit centres in D
dimensions, drawn around `families` look-alike directions (centre = w * family + sqrt(1-w^2) * own,
so identities of one family have cosine about w^2 and make hard negatives). The labeled classes'
proxies are the centres of their identities. The unlabeled set holds `num_unlabeled_ids`
identities, a fraction `overlap` of them labeled identities (their centres moved slightly:
`proxy_jitter`, a proxy is not the mean of the new photos), the rest new. Each image is its
centre plus isotropic noise of norm `noise` * (a per-image log-normal factor, `noise_spread`),
renormalised. Images per identity are log-normal around `images_per_id` (at least 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PlantedWorld:
    embeddings: np.ndarray      # [N, D] float32 unit rows
    proxies: np.ndarray         # [C, D] float32 unit rows
    identity: np.ndarray        # [N] int64 ground-truth identity of each unlabeled image
    overlap: np.ndarray         # [N] bool: the identity is one of the labeled classes
    labeled_class: np.ndarray   # [N] int64: that class, -1 for new identities


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_world(*, num_labeled: int = 1000, num_unlabeled_ids: int = 500, overlap: float = 0.25,
                  images_per_id: float = 20.0, dim: int = 128, families: int = 32, family_weight: float = 0.6,
                  noise: float = 0.9, noise_spread: float = 0.25, proxy_jitter: float = 0.2,
                  seed: int = 0) -> PlantedWorld:
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap={overlap} must be in [0, 1]")
    rng = np.random.default_rng(seed)
    family_dirs = _unit(rng.standard_normal((families, dim)))
    n_overlap = int(round(overlap * num_unlabeled_ids))
    if n_overlap > num_labeled:
        raise ValueError(f"overlap {overlap} of {num_unlabeled_ids} identities needs {n_overlap} labeled classes, "
                         f"there are {num_labeled}")
    n_new = num_unlabeled_ids - n_overlap

    def centres(n: int) -> np.ndarray:
        fam = family_dirs[rng.integers(0, families, n)]
        own = _unit(rng.standard_normal((n, dim)))
        return _unit(family_weight * fam + np.sqrt(1 - family_weight ** 2) * own)

    proxies = centres(num_labeled)
    shared = rng.choice(num_labeled, n_overlap, replace=False)
    jitter = proxy_jitter * rng.standard_normal((n_overlap, dim)) / np.sqrt(dim)
    id_centres = np.concatenate([_unit(proxies[shared] + jitter), centres(n_new)])
    id_class = np.concatenate([shared, np.full(n_new, -1)]).astype(np.int64)
    counts = np.maximum(2, np.round(images_per_id * np.exp(rng.normal(-0.06, 0.35, num_unlabeled_ids)))).astype(int)
    identity = np.repeat(np.arange(num_unlabeled_ids), counts)
    scale = noise * np.exp(noise_spread * rng.standard_normal(len(identity)))[:, None]
    noise_dirs = _unit(rng.standard_normal((len(identity), dim)))
    embeddings = _unit(id_centres[identity] + scale * noise_dirs)
    order = rng.permutation(len(identity))
    identity = identity[order]
    return PlantedWorld(embeddings[order], proxies, identity.astype(np.int64), id_class[identity] >= 0,
                        id_class[identity])
