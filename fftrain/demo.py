"""The embedded default run: the synthetic six-dataset demo on CPU.

`torchrun --nproc_per_node=2 fftrain/train.py` with no config trains this: it generates the
synthetic set under `data/synth` when missing, trains a tiny iresnet through the dataset-aware
phase, the fusion step at T2 and the agnostic phase, and reports verification accuracy on the
synthetic held-out pairs (data.verification empty + no manifest = the synthetic set's
verification.bin). configs/demo_cpu.yaml holds the same values (a test keeps them equal).
"""

from __future__ import annotations

import os

DEMO_CONFIG: dict = {
    "output_dir": "runs/demo",
    "seed": 0,
    "device": "auto",
    "model": {"backbone": "iresnet_tiny", "embedding_size": 128, "channels_last": False},
    "data": {"manifest": "", "synth_dir": "data/synth", "synth_preset": "default", "reader": "dali",
             "batch_size": 64, "num_workers": 1, "verification": []},
    "head": {"margin": "arcface", "scale": 32.0, "m": 0.3, "sample_rate": 1.0},
    "grl": {"weight": 0.1, "start_step": 0, "hidden": 64},
    # T1 and T2 'auto', their bounds fixed before the first auto run (never tuned on its result):
    # T2 no earlier than step 200 (t2_floor 0.2: 4x the 50 warmup steps; by then every one of the 600
    # classes has been sampled ~40 times, 200 steps x 2 ranks x 64 images / 600) and no later than 500
    # (t2_ceiling 0.5: the fixed T2 the demo had, leaving half the steps and both lr drops to the agnostic
    # phase); a readiness check every 50 steps (7 at most, each a kNN of 600 proxies: seconds against
    # minutes of training). T1 within the defaults [0.5, 0.95]: below 0.5 two 128-d proxies are barely
    # alike, above 0.95 only copies would merge.
    "fusion": {"t1": "auto", "t2": "auto", "knn_k": 10, "max_component": 6, "t1_min": 0.5, "t1_max": 0.95,
               "t2_floor": 0.2, "t2_ceiling": 0.5, "readiness_every": 50},
    "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "total_steps": 1000,
              "lr_milestones": [750, 900], "warmup_steps": 50},
    "checkpoint": {"every": 300, "keep_last": 2, "resume": "auto"},
    "log": {"every": 25, "eval_every": 0, "tensorboard": True},
}


def ensure_synthetic_data(synth_dir: str, preset: str, seed: int, generate: bool = True) -> str:
    """Generate the synthetic set if `synth_dir` has none (saying where and how much first, as the
    demo does this unasked); return its manifest path. `generate=False`: only the path."""
    from recordio_tools.synthetic import PRESETS, generate_synthetic_set, make_plan, synthetic_manifest_path

    manifest = synthetic_manifest_path(synth_dir)
    if generate and not os.path.exists(manifest):
        config = PRESETS[preset](seed=seed)
        count = make_plan(config).num_images
        print(f"fftrain: data.manifest is empty: generating the synthetic demo set ({preset!r} preset, "
              f"~{count / 1000:.1f}K training images + {2 * config.verification_pairs} verification images) into "
              f"{os.path.abspath(synth_dir)} (data.synth_dir); set data.manifest to train on your own data",
              flush=True)
        generate_synthetic_set(synth_dir, preset=preset, seed=seed)
        print(f"fftrain: wrote {_folder_mib(synth_dir):.1f} MiB to {os.path.abspath(synth_dir)}", flush=True)
    return manifest


def _folder_mib(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder)
               for name in names) / 2**20
