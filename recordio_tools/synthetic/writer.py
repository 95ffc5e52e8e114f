"""Writing the synthetic set: rendering tasks (run in worker processes, the bytes independent of their
number), `generate` (six dataset folders, manifest, overlaps ground truth, verification.bin), and the
entry points of the trainer's demo (`generate_synthetic_set`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Iterable

import numpy as np

from .faces import render_person
from .noise import NOISE_FILE, NoisePlan, noise_ground_truth, plant_noise
from .plan import SynthConfig, SynthPlan, make_plan, tiny_config
from .world import _IMAGES, _NOISE_IMAGES, _ORDER, _VERIFICATION, STYLES, cluster_centres, person_latent


# ---------------------------------------------------------------------------------------------
# Rendering tasks (run in worker processes) and the writer.

_CENTRES: dict[int, np.ndarray] = {}


def _latent(seed: int, person: int) -> np.ndarray:
    if seed not in _CENTRES:
        _CENTRES[seed] = cluster_centres(seed)
    return person_latent(seed, person, _CENTRES[seed])


def _render_task(task: tuple) -> list[bytes]:
    kind = task[0]
    if kind == "class":
        _, seed, d, local, person, count, style, knobs = task
        rng = np.random.default_rng([seed, _IMAGES, d, local])
        return render_person(_latent(seed, person), count, STYLES[style], rng, *knobs)
    if kind == "noisy_class":
        _, seed, d, local, person, count, style, knobs, wrong_persons = task
        rng = np.random.default_rng([seed, _IMAGES, d, local])
        right = render_person(_latent(seed, person), count - len(wrong_persons), STYLES[style], rng, *knobs)
        rng = np.random.default_rng([seed, _NOISE_IMAGES, d, local])
        return right + [render_person(_latent(seed, p), 1, STYLES[style], rng, *knobs)[0] for p in wrong_persons]
    _, seed, j, a, b, same, knobs = task
    rng = np.random.default_rng([seed, _VERIFICATION, j])
    style = STYLES["verification"]
    if same:
        return render_person(_latent(seed, a), 2, style, rng, *knobs)
    return render_person(_latent(seed, a), 1, style, rng, *knobs) + render_person(_latent(seed, b), 1, style, rng,
                                                                                 *knobs)


def _imap(tasks: list[tuple], workers: int) -> Iterable[list[bytes]]:
    if workers <= 1:
        yield from map(_render_task, tasks)
        return
    import multiprocessing

    from ..shards import exit_with_parent

    with multiprocessing.get_context("fork").Pool(workers, initializer=exit_with_parent,
                                                  initargs=(os.getpid(),)) as pool:
        yield from pool.imap(_render_task, tasks, chunksize=4)


SYNTH_FILE = "synth.json"
VERIFICATION_FILE = "verification.bin"


def generate(config: SynthConfig, out_dir: str, progress: bool = True) -> dict:
    """Write the synthetic set to `out_dir` (all or nothing) and return the summary also written to synth.json.

    Layout: <out_dir>/<dataset>/ (six dataset folders, shards + dataset.json), manifest.json and train.idx
    (the training set over all six, in the order of DATASET_NAMES), overlaps.json, verification.bin,
    synth.json, README.md.
    """
    from tqdm import tqdm

    from ..manifest import write_manifest
    from ..overlaps import OVERLAPS_FILE, make_groups, write_overlaps
    from ..files import atomic_directory, write_text_atomic
    from ..shards import DatasetWriter
    from ..verification_bin import write_verification_bin

    plan = make_plan(config)
    noise = plant_noise(plan)
    knobs = (config.jpeg_quality, config.identity_spread, config.image_drift)
    tasks = [_class_task(config, plan, noise, d, local, knobs)
             for d, ds in enumerate(plan.datasets) for local in range(ds.num_classes)]
    tasks += [("pair", config.seed, j, a, b, same, knobs) for j, (a, b, same) in enumerate(plan.pairs)]
    total = plan.num_images + 2 * len(plan.pairs)
    with atomic_directory(out_dir, "synth") as tmp, \
            tqdm(total=total, unit="img", desc="synth", disable=not progress, leave=False) as bar:
        results = iter(_imap(tasks, config.workers))
        infos, folders, mislabeled = [], [], []
        for d, ds in enumerate(plan.datasets):
            images = []
            for local in range(ds.num_classes):
                jpegs = next(results)
                images += [(local, jpeg) for jpeg in jpegs]
                bar.update(len(jpegs))
            folder = os.path.join(tmp, ds.name)
            os.makedirs(folder)
            writer = DatasetWriter(folder, ds.name, config.shards, ds.class_offset)
            order = np.random.default_rng([config.seed, _ORDER, d]).permutation(len(images))
            for i in order:
                writer.add(*images[i])
            mislabeled += _where_wrong_images_went(plan, noise, d, order, config.shards)
            infos.append(writer.finish(ds.num_classes))
            folders.append(folder)
        pair_images: list[bytes] = []
        for _ in plan.pairs:
            jpegs = next(results)
            pair_images += jpegs
            bar.update(len(jpegs))
        write_verification_bin(os.path.join(tmp, VERIFICATION_FILE), pair_images, [s for _, _, s in plan.pairs])
        table = [(i.name, i.class_offset, i.num_classes) for i in infos]
        write_overlaps(os.path.join(tmp, OVERLAPS_FILE), table, make_groups(table, plan.groups),
                       source="recordio_tools synth", seed=config.seed)
        write_manifest(tmp, infos, folders)
        if noise.active:
            write_text_atomic(os.path.join(tmp, NOISE_FILE),
                              json.dumps(noise_ground_truth(plan, noise, mislabeled), indent=1) + "\n")
        summary = {
            "format": "fftrain-synth", "version": 1,
            # workers: the output does not depend on it; noise options: absent when off, as before they existed
            "config": {k: v for k, v in asdict(config).items()
                       if k != "workers" and not (k.startswith("noise_") and not v)},
            "num_classes": sum(i.num_classes for i in infos), "num_images": plan.num_images,
            "datasets": [{"name": i.name, "class_offset": i.class_offset, "num_classes": i.num_classes,
                          "num_images": i.num_images, "style": asdict(STYLES[i.name])} for i in infos],
            "overlap_groups": len(plan.groups),
            "verification": {"file": VERIFICATION_FILE, "pairs": len(plan.pairs),
                             "positive": sum(s for _, _, s in plan.pairs),
                             "identities": len(plan.verification_persons)},
            "manifest": "manifest.json", "overlaps": OVERLAPS_FILE,
        }
        if noise.active:
            summary["noise"] = {"file": NOISE_FILE, "mislabeled_images": len(mislabeled),
                                "duplicate_pairs": len(noise.duplicates), "leaked_ids": len(noise.leaked)}
        with open(os.path.join(tmp, SYNTH_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(_README.format(**summary, names=", ".join(i.name for i in infos)))
    return summary


def _class_task(config: SynthConfig, plan: SynthPlan, noise: NoisePlan, d: int, local: int, knobs) -> tuple:
    ds = plan.datasets[d]
    person, count = ds.persons[local], ds.image_counts[local]
    wrong = noise.wrong.get((d, local))
    if not wrong:
        return ("class", config.seed, d, local, person, count, ds.name, knobs)
    return ("noisy_class", config.seed, d, local, person, count, ds.name, knobs, [ds.persons[o] for o in wrong])


def _where_wrong_images_went(plan: SynthPlan, noise: NoisePlan, d: int, order: np.ndarray, shards: int) -> list[dict]:
    """(shard, key) of dataset d's wrongly filed images; the writer puts write position i in shard
    i % shards under key i // shards, and a noisy class's wrong images are its last ones."""
    from ..manifest import shard_name

    ds = plan.datasets[d]
    if not any(dd == d for dd, _ in noise.wrong):
        return []
    true_local = []  # per image, in rendering order: the local label its person has, or None when filed right
    for local, count in enumerate(ds.image_counts):
        wrong = noise.wrong.get((d, local), [])
        true_local += [None] * (count - len(wrong)) + wrong
    filed = np.repeat(np.arange(ds.num_classes), ds.image_counts)
    out = []
    for position, i in enumerate(order.tolist()):
        if true_local[i] is not None:
            out.append({"dataset": ds.name, "shard": shard_name(position % shards) + ".rec", "key": position // shards,
                        "source_class": ds.class_offset + int(filed[i]),
                        "true_source_class": ds.class_offset + true_local[i]})
    return sorted(out, key=lambda r: (r["shard"], r["key"]))


_README = """# Synthetic six-dataset set (recordio_tools synth)

{num_classes} identities, {num_images} images in six datasets ({names}), seed {config[seed]}.
How it is made: docs/synthetic_data.md in the fftrain repository.

- `<dataset>/`: shards and dataset.json of one dataset (labels are source classes: class_offset + local).
- `manifest.json`, `train.idx`: the training set over all six datasets; give this folder to the trainer.
- `overlaps.json`: ground truth, {overlap_groups} persons present in two or more datasets.
- `verification.bin`: {verification[pairs]} pairs (insightface format) of {verification[identities]} identities
  that are in no training dataset.
- `synth.json`: the parameters and per-dataset counts.
"""


# ---------------------------------------------------------------------------------------------
# Entry points for the trainer's demo (fftrain/demo.py generates the set when it is missing).

PRESETS = {"default": SynthConfig, "tiny": tiny_config}


def synthetic_manifest_path(out_dir: str) -> str:
    """Where `generate` puts the training-set manifest: <out_dir>/manifest.json."""
    return os.path.join(out_dir, "manifest.json")


def generate_synthetic_set(out_dir: str, preset: str = "default", seed: int = 0, progress: bool = True,
                           **overrides) -> dict:
    """`generate` with a named preset ('default' or 'tiny'); `overrides` are SynthConfig fields."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; available: {sorted(PRESETS)}")
    return generate(PRESETS[preset](seed=seed, **overrides), out_dir, progress=progress)
