"""The synthetic six-dataset set: a parametric face renderer, the dataset plan, and the writer.

Run it through the CLI (`recordio_tools synth --out data/synth`, `--tiny` for tests); the
layout it writes and how the faces are made are described in docs/synthetic_data.md.

Everything is a pure function of the seed: a person's latent comes from
`np.random.default_rng([seed, 1, person])`, an image batch from `[seed, 2, dataset, local label]`,
so the bytes written do not depend on the number of worker processes.

The package, one module per step: `world` (dataset names and sizes, seed streams, styles, a person's
latent), `drawing` (the renderer's primitives and camera), `faces` (`render_faces`, `render_person`),
`plan` (`SynthConfig` -> `SynthPlan`), `noise` (planted label noise and leakage), `writer`
(`generate`, the demo's `generate_synthetic_set`) and `unlabeled` (`generate_unlabeled`).
"""

from .drawing import encode_jpegs
from .faces import RENDER_CHUNK, render_faces, render_person
from .noise import NOISE_FILE, NoisePlan, noise_ground_truth, plant_noise
from .plan import DatasetPlan, SynthConfig, SynthPlan, allocate_ids, make_plan, mean_images_per_id, tiny_config
from .unlabeled import UNLABELED_DIR, UNLABELED_TRUTH_FILE, UnlabeledPlan, generate_unlabeled, make_unlabeled_plan
from .world import (_NOISE_IMAGES, CLUSTER_WEIGHT, DATASET_NAMES, FACE_UNIT, IDENTITY_SPREAD, IMAGE_DRIFT, LATENT_DIM,
                    NUM_CLUSTERS, PAPER_DATASETS, SIZE, STYLES, Style, cluster_centres, person_latent)
from .writer import (PRESETS, SYNTH_FILE, VERIFICATION_FILE, _latent, generate, generate_synthetic_set,
                     synthetic_manifest_path)

__all__ = ["CLUSTER_WEIGHT", "DATASET_NAMES", "DatasetPlan", "FACE_UNIT", "IDENTITY_SPREAD", "IMAGE_DRIFT",
           "LATENT_DIM", "NOISE_FILE", "NUM_CLUSTERS", "NoisePlan", "PAPER_DATASETS", "PRESETS", "RENDER_CHUNK",
           "SIZE", "STYLES", "SYNTH_FILE", "Style", "SynthConfig", "SynthPlan", "UNLABELED_DIR",
           "UNLABELED_TRUTH_FILE", "UnlabeledPlan", "VERIFICATION_FILE", "_NOISE_IMAGES", "_latent", "allocate_ids",
           "cluster_centres", "encode_jpegs", "generate", "generate_synthetic_set", "generate_unlabeled",
           "make_plan", "make_unlabeled_plan", "mean_images_per_id", "noise_ground_truth", "person_latent",
           "plant_noise", "render_faces", "render_person", "synthetic_manifest_path", "tiny_config"]
