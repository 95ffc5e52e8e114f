"""An unlabeled collection in the same face world (`recordio_tools synth --unlabeled N`): identities partly
shared with the labeled set, written as one dataset folder with its truth, for the pseudo-label pipeline."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .plan import SynthConfig, _image_counts, make_plan
from .world import _ORDER, _PLAN
from .writer import _imap

UNLABELED_DIR = "unlabeled"
UNLABELED_TRUTH_FILE = "truth.json"
_UNLABELED_STREAM = 1000  # dataset index of the unlabeled images' random streams (the six use 0..5)


@dataclass
class UnlabeledPlan:
    persons: list[int]
    image_counts: list[int]
    source_class: list[int]  # the labeled source class of each person (its first), -1 for new persons


def make_unlabeled_plan(config: SynthConfig, num_ids: int, overlap: float, images_per_id: float) -> UnlabeledPlan:
    """`num_ids` persons, round(overlap * num_ids) of them drawn from the labeled datasets' persons,
    the others new (numbered after the held-out verification persons)."""
    if num_ids < 1 or not 0.0 <= overlap <= 1.0 or images_per_id < 2:
        raise ValueError(f"unlabeled: need ids >= 1 (got {num_ids}), overlap in [0, 1] (got {overlap}) and "
                         f"images per id >= 2 (got {images_per_id})")
    plan = make_plan(config)
    labeled: dict[int, int] = {}
    for ds in plan.datasets:
        for local, person in enumerate(ds.persons):
            labeled.setdefault(person, ds.class_offset + local)
    n_overlap = int(round(overlap * num_ids))
    if n_overlap > len(labeled):
        raise ValueError(f"unlabeled: overlap {overlap} of {num_ids} identities needs {n_overlap} labeled persons, "
                         f"the labeled datasets hold {len(labeled)}")
    rng = np.random.default_rng([config.seed, _PLAN, _UNLABELED_STREAM])
    shared = sorted(rng.choice(sorted(labeled), n_overlap, replace=False).tolist())
    first_new = max(plan.verification_persons) + 1
    persons = shared + list(range(first_new, first_new + num_ids - n_overlap))
    return UnlabeledPlan(persons, _image_counts(images_per_id, num_ids, rng),
                         [labeled.get(p, -1) for p in persons])


def generate_unlabeled(config: SynthConfig, out_dir: str, *, num_ids: int, overlap: float = 0.25,
                       images_per_id: float = 10.0, progress: bool = True) -> dict:
    """Write an unlabeled dataset folder (one shard, every label 0) and its ground truth (truth.json:
    person, overlap flag and labeled source class of every record, in record order); all or nothing."""
    from tqdm import tqdm

    from ..files import atomic_directory
    from ..shards import DatasetWriter

    uplan = make_unlabeled_plan(config, num_ids, overlap, images_per_id)
    knobs = (config.jpeg_quality, config.identity_spread, config.image_drift)
    tasks = [("class", config.seed, _UNLABELED_STREAM, j, person, count, "verification", knobs)
             for j, (person, count) in enumerate(zip(uplan.persons, uplan.image_counts))]
    images: list[tuple[int, bytes]] = []
    with tqdm(total=sum(uplan.image_counts), unit="img", desc="synth unlabeled", disable=not progress,
              leave=False) as bar:
        for j, jpegs in enumerate(_imap(tasks, config.workers)):
            images += [(j, jpeg) for jpeg in jpegs]
            bar.update(len(jpegs))
    order = np.random.default_rng([config.seed, _ORDER, _UNLABELED_STREAM]).permutation(len(images))
    with atomic_directory(out_dir) as tmp:
        writer = DatasetWriter(tmp, UNLABELED_DIR, 1)
        for i in order:
            writer.add(0, images[i][1])
        writer.finish(1)
        who = [images[i][0] for i in order]
        truth = {"format": "fftrain-unlabeled-truth", "version": 1, "seed": config.seed, "overlap_fraction": overlap,
                 "identity": [uplan.persons[j] for j in who],
                 "overlap": [uplan.source_class[j] >= 0 for j in who],
                 "source_class": [uplan.source_class[j] for j in who]}
        with open(os.path.join(tmp, UNLABELED_TRUTH_FILE), "w", encoding="utf-8") as f:
            json.dump(truth, f)
            f.write("\n")
    return {"identities": num_ids, "overlapping_identities": sum(c >= 0 for c in uplan.source_class),
            "images": len(images), "overlapping_images": int(sum(truth["overlap"]))}
