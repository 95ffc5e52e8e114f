"""The dataset plan: who is in which dataset, how many images each, which pairs to verify
(`SynthConfig` in, `SynthPlan` out; pure functions of the config's seed)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .world import _PLAN, IDENTITY_SPREAD, IMAGE_DRIFT, PAPER_DATASETS


@dataclass
class SynthConfig:
    """What `recordio_tools synth` generates. Identity and image counts are totals over the six datasets
    unless said otherwise."""

    seed: int = 0
    """everything (persons, images, plan) is a function of the seed"""
    ids: int = 600
    """training identities over the six datasets, split in the paper's proportions"""
    min_ids: int = 40
    """floor on one dataset's identities (the paper's small datasets would otherwise vanish)"""
    images_per_id: float = 0.0
    """mean images per identity in every dataset; 0 = each dataset's paper ratio, clipped below"""
    min_images_per_id: float = 8.0
    """lower clip of the paper ratio (CelebA's is 19.6)"""
    max_images_per_id: float = 40.0
    """upper clip of the paper ratio (VGGFace2's is 360)"""
    overlap: float = 0.12
    """fraction of each dataset's identities that are also in another dataset"""
    verification_pairs: int = 300
    """pairs in verification.bin, half positive"""
    verification_ids: int = 150
    """held-out identities (never in training) the pairs are drawn from"""
    shards: int = 2
    """shards per dataset"""
    jpeg_quality: int = 0
    """JPEG quality for every image; 0 = each dataset's style (75..92)"""
    identity_spread: float = IDENTITY_SPREAD
    """how far persons lie from the average face, relative to the built-in spreads; lower is harder"""
    image_drift: float = IMAGE_DRIFT
    """per-image change of a person's latent (hair, beard, make-up between photos); higher is harder"""
    workers: int = 2
    """rendering processes; 1 = render in this process. Output bytes do not depend on it."""
    noise_mislabel: float = 0.0
    """planted label noise: fraction of each dataset's images filed under another identity of that dataset"""
    noise_duplicates: float = 0.0
    """planted label noise: fraction of each dataset's identities that are a second label of another of its identities"""
    noise_leaked_ids: int = 0
    """planted leakage: verification identities that are also training identities (one dataset each)"""

    def __post_init__(self):
        checks = [
            (self.ids >= 6 * self.min_ids, f"ids={self.ids} must be at least 6 x min_ids={self.min_ids}"),
            (self.min_ids >= 2, f"min_ids={self.min_ids} must be >= 2"),
            (self.images_per_id == 0 or self.images_per_id >= 2, f"images_per_id={self.images_per_id} must be 0 "
                                                                  "(paper ratios) or >= 2"),
            (2 <= self.min_images_per_id <= self.max_images_per_id,
             f"need 2 <= min_images_per_id={self.min_images_per_id} <= max_images_per_id={self.max_images_per_id}"),
            (0.0 <= self.overlap <= 0.5, f"overlap={self.overlap} must be in [0, 0.5]"),
            (self.verification_pairs >= 2, f"verification_pairs={self.verification_pairs} must be >= 2"),
            (self.verification_ids >= 2, f"verification_ids={self.verification_ids} must be >= 2"),
            (self.shards >= 1, f"shards={self.shards} must be >= 1"),
            (self.jpeg_quality == 0 or 1 <= self.jpeg_quality <= 100,
             f"jpeg_quality={self.jpeg_quality} must be 0 (style) or in [1, 100]"),
            (self.workers >= 1, f"workers={self.workers} must be >= 1"),
            (self.identity_spread > 0, f"identity_spread={self.identity_spread} must be > 0"),
            (self.image_drift >= 0, f"image_drift={self.image_drift} must be >= 0"),
            (0.0 <= self.noise_mislabel <= 0.2, f"noise_mislabel={self.noise_mislabel} must be in [0, 0.2]"),
            (0.0 <= self.noise_duplicates <= 0.2, f"noise_duplicates={self.noise_duplicates} must be in [0, 0.2]"),
            (0 <= self.noise_leaked_ids <= self.verification_ids,
             f"noise_leaked_ids={self.noise_leaked_ids} must be in [0, verification_ids={self.verification_ids}]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def tiny_config(**overrides) -> SynthConfig:
    """The `--tiny` preset: 30 identities per dataset, about 6 images each; for tests (a few seconds)."""
    base = dict(ids=180, min_ids=30, images_per_id=6.0, verification_pairs=40, verification_ids=30, shards=1)
    base.update(overrides)
    return SynthConfig(**base)


@dataclass
class DatasetPlan:
    name: str
    class_offset: int
    persons: list[int]  # person of each local label
    image_counts: list[int]  # images of each local label

    @property
    def num_classes(self) -> int:
        return len(self.persons)

    @property
    def num_images(self) -> int:
        return sum(self.image_counts)


@dataclass
class SynthPlan:
    config: SynthConfig
    datasets: list[DatasetPlan]
    groups: list[list[tuple[int, int]]]  # each: (dataset index, local label) of one person
    verification_persons: list[int]
    pairs: list[tuple[int, int, bool]]  # (person a, person b, same)

    @property
    def num_images(self) -> int:
        return sum(d.num_images for d in self.datasets)


def allocate_ids(total: int, floor: int, weights: Sequence[float]) -> list[int]:
    """Split `total` in proportion to `weights` with every share >= `floor` (largest remainders)."""
    n = len(weights)
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        remaining = total - sum(fixed.values())
        weight = sum(weights[i] for i in free)
        shares = {i: remaining * weights[i] / weight for i in free}
        low = [i for i in free if shares[i] < floor]
        if not low:
            break
        for i in low:
            fixed[i] = floor
    counts = {i: int(math.floor(shares[i])) for i in free}
    left = remaining - sum(counts.values())
    for i in sorted(free, key=lambda i: (counts[i] - shares[i], i))[:left]:
        counts[i] += 1
    counts.update(fixed)
    return [counts[i] for i in range(n)]


def mean_images_per_id(config: SynthConfig) -> list[float]:
    if config.images_per_id:
        return [float(config.images_per_id)] * len(PAPER_DATASETS)
    return [min(config.max_images_per_id, max(config.min_images_per_id, images / ids))
            for _, ids, images in PAPER_DATASETS]


def _plant_overlaps(sizes: Sequence[int], fraction: float, rng: np.random.Generator) -> list[list[int]]:
    """Groups of dataset indices, one per shared person, so that about `fraction` of each dataset's
    identities are shared; mostly pairs of datasets, about one in six a triple."""
    remaining = np.array([int(round(fraction * s)) for s in sizes])
    groups = []
    while remaining.sum() > 0:
        first = int(rng.choice(np.flatnonzero(remaining == remaining.max())))
        others = np.flatnonzero((remaining > 0) & (np.arange(len(sizes)) != first))
        if len(others) == 0:
            # the last slots: share with a dataset that still has unshared identities
            used = np.zeros(len(sizes), int)
            for g in groups:
                used[g] += 1
            others = np.flatnonzero((used + remaining < np.asarray(sizes)) & (np.arange(len(sizes)) != first))
            if len(others) == 0:
                break
            group = [first, int(rng.choice(others))]
        else:
            k = 2 if len(others) == 1 or rng.random() > 1 / 6 else 3
            p = remaining[others] / remaining[others].sum()
            group = [first] + [int(x) for x in rng.choice(others, size=k - 1, replace=False, p=p)]
        for d in group:
            remaining[d] = max(0, remaining[d] - 1)
        groups.append(sorted(group))
    return groups


def _image_counts(mean: float, n: int, rng: np.random.Generator) -> list[int]:
    """Images per identity: log-normal around `mean` (long-tailed like the real sets), at least 2."""
    counts = np.round(mean * np.exp(rng.normal(-0.06, 0.35, n)))
    return np.clip(counts, max(2, round(0.4 * mean)), round(2.5 * mean)).astype(int).tolist()


def make_plan(config: SynthConfig) -> SynthPlan:
    rng = np.random.default_rng([config.seed, _PLAN])
    sizes = allocate_ids(config.ids, config.min_ids, [ids for _, ids, _ in PAPER_DATASETS])
    means = mean_images_per_id(config)
    shared = _plant_overlaps(sizes, config.overlap, rng)
    persons: list[list[int]] = [[] for _ in sizes]
    next_person = 0
    for group in shared:
        for d in group:
            persons[d].append(next_person)
        next_person += 1
    for d, size in enumerate(sizes):
        while len(persons[d]) < size:
            persons[d].append(next_person)
            next_person += 1
    datasets, offset = [], 0
    where: dict[int, list[tuple[int, int]]] = {}
    for d, ((name, _, _), size, mean) in enumerate(zip(PAPER_DATASETS, sizes, means)):
        order = rng.permutation(persons[d]).tolist()
        for local, person in enumerate(order):
            where.setdefault(person, []).append((d, local))
        datasets.append(DatasetPlan(name, offset, order, _image_counts(mean, size, rng)))
        offset += size
    groups = [where[p] for p in sorted(where) if len(where[p]) > 1]

    held_out = list(range(next_person, next_person + config.verification_ids))
    n_pos = config.verification_pairs // 2
    pos_persons = rng.permutation(np.resize(rng.permutation(held_out), n_pos)).tolist()
    pairs = [(p, p, True) for p in pos_persons]
    for _ in range(config.verification_pairs - n_pos):
        a, b = rng.choice(held_out, size=2, replace=False).tolist()
        pairs.append((a, b, False))
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    return SynthPlan(config, datasets, groups, held_out, pairs)
