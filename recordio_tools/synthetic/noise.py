"""Planted label noise and leakage (all off by default; the plan is then untouched): mislabeled images,
duplicate classes inside a dataset, identities leaked into the verification pairs, and their ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .plan import SynthPlan
from .world import _NOISE_PLAN

NOISE_FILE = "noise.json"


@dataclass
class NoisePlan:
    """What `plant_noise` changed; written as ground truth to noise.json."""

    wrong: dict[tuple[int, int], list[int]]
    """(dataset, local label) -> the local label whose person each wrongly filed image shows"""
    duplicates: list[tuple[int, int, int]]
    """(dataset, local label, local label): one person filed under two labels of one dataset"""
    leaked: list[tuple[int, int, int]]
    """(verification person, dataset, local label): a held-out person who is also a training class"""

    @property
    def active(self) -> bool:
        return bool(self.wrong or self.duplicates or self.leaked)


def _free_classes(plan: SynthPlan) -> list[list[int]]:
    """Per dataset, the local labels of persons in no planted cross-dataset overlap group."""
    shared = {tuple(m) for g in plan.groups for m in g}
    return [[local for local in range(ds.num_classes) if (d, local) not in shared]
            for d, ds in enumerate(plan.datasets)]


def _plant_duplicates(plan: SynthPlan, free: list[list[int]], rng) -> list[tuple[int, int, int]]:
    duplicates = []
    for d, ds in enumerate(plan.datasets):
        n = min(int(round(plan.config.noise_duplicates * ds.num_classes)), len(free[d]) // 2)
        picked = [int(x) for x in rng.choice(free[d], size=2 * n, replace=False)]
        for keep, dup in zip(picked[:n], picked[n:]):
            ds.persons[dup] = ds.persons[keep]
            duplicates.append((d, min(keep, dup), max(keep, dup)))
        free[d] = [local for local in free[d] if local not in set(picked)]
    return sorted(duplicates)


def _plant_leaks(plan: SynthPlan, free: list[list[int]], rng) -> list[tuple[int, int, int]]:
    n = plan.config.noise_leaked_ids
    pool = [(d, local) for d in range(len(plan.datasets)) for local in free[d]]
    if n > len(pool):
        raise ValueError(f"noise_leaked_ids={n}: only {len(pool)} training classes are free to hold a leaked identity")
    persons = rng.choice(plan.verification_persons, size=n, replace=False)
    leaked = []
    for person, slot in zip(persons, rng.choice(len(pool), size=n, replace=False)):
        d, local = pool[slot]
        plan.datasets[d].persons[local] = int(person)
        free[d].remove(local)
        leaked.append((int(person), d, local))
    return sorted(leaked, key=lambda x: (x[1], x[2]))


def _plant_wrong_images(plan: SynthPlan, rng) -> dict[tuple[int, int], list[int]]:
    """At most a third (less one) of a class's images are wrong, so its own person stays the majority."""
    wrong: dict[tuple[int, int], list[int]] = {}
    for d, ds in enumerate(plan.datasets):
        slots = [local for local, count in enumerate(ds.image_counts) for _ in range((count - 1) // 3)]
        n = min(int(round(plan.config.noise_mislabel * ds.num_images)), len(slots))
        for i in sorted(rng.choice(len(slots), size=n, replace=False).tolist()):
            local = slots[i]
            others = [o for o in range(ds.num_classes) if ds.persons[o] != ds.persons[local]]
            wrong.setdefault((d, local), []).append(int(rng.choice(others)))
    return wrong


def plant_noise(plan: SynthPlan) -> NoisePlan:
    """Plant the config's label noise into `plan` (in place): duplicate labels and leaked verification
    identities replace persons of classes in no overlap group; wrongly filed images are listed per class.
    With every noise option 0 the plan is unchanged and no random number is drawn from the plan's streams."""
    config = plan.config
    if not (config.noise_mislabel or config.noise_duplicates or config.noise_leaked_ids):
        return NoisePlan({}, [], [])
    rng = np.random.default_rng([config.seed, _NOISE_PLAN])
    free = _free_classes(plan)
    duplicates = _plant_duplicates(plan, free, rng)
    leaked = _plant_leaks(plan, free, rng)
    return NoisePlan(_plant_wrong_images(plan, rng), duplicates, leaked)


def noise_ground_truth(plan: SynthPlan, noise: NoisePlan, mislabeled: list[dict]) -> dict:
    """The body of noise.json; `mislabeled` is where `generate` put each wrongly filed image."""
    ds = plan.datasets
    leaked = []
    for person, d, local in noise.leaked:
        pairs = [j for j, (a, b, _) in enumerate(plan.pairs) if person in (a, b)]
        images = sorted(2 * j + k for j in pairs for k in (0, 1) if plan.pairs[j][k] == person)
        leaked.append({"dataset": ds[d].name, "local_label": local, "source_class": ds[d].class_offset + local,
                       "verification_images": images, "verification_pairs": pairs})
    return {
        "format": "fftrain-synth-noise", "version": 1,
        "settings": {"noise_mislabel": plan.config.noise_mislabel, "noise_duplicates": plan.config.noise_duplicates,
                     "noise_leaked_ids": plan.config.noise_leaked_ids},
        "mislabeled": mislabeled,
        "duplicates": [{"dataset": ds[d].name, "local_labels": [a, b],
                        "source_classes": [ds[d].class_offset + a, ds[d].class_offset + b]}
                       for d, a, b in noise.duplicates],
        "leaked": leaked,
    }
