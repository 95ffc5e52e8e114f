"""One training run on this process: distributed set-up, data, trainer, clean errors.

Called by fftrain/train.py after the config is loaded. Expected failures (bad data, a checkpoint
that does not fit, a diverged loss) end with one message naming the file or step, exit code 1.
"""

from __future__ import annotations

import os
import sys

from .config import TrainConfig, dump_config
from .distributed import DistContext, barrier, destroy_distributed, init_distributed
from .run_log import setup_logging


def resolve_manifest(cfg: TrainConfig, ctx: DistContext) -> str:
    """The training set's manifest; for the demo (no manifest) rank 0 generates the synthetic set."""
    if cfg.data.manifest:
        return cfg.data.manifest
    from .demo import ensure_synthetic_data

    if ctx.is_main:
        manifest = ensure_synthetic_data(cfg.data.synth_dir, cfg.data.synth_preset, cfg.seed)
    barrier(ctx.group)
    if not ctx.is_main:
        manifest = ensure_synthetic_data(cfg.data.synth_dir, cfg.data.synth_preset, cfg.seed)
    return manifest


def _expected_errors() -> tuple[type[BaseException], ...]:
    from recordio_tools.manifest import ManifestError
    from recordio_tools.recordio import RecordIOError

    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.records import DataError
    from .trainer import TrainingDiverged

    return ManifestError, RecordIOError, CheckpointError, ConfigError, DataError, TrainingDiverged


def run_training(cfg: TrainConfig) -> int:
    ctx = init_distributed(cfg.device)
    os.makedirs(cfg.output_dir, exist_ok=True)
    log = setup_logging(cfg.output_dir, ctx.rank)
    try:
        if ctx.is_main:
            with open(os.path.join(cfg.output_dir, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(dump_config(cfg))
        from .data import TrainingData
        from .trainer import Trainer

        data = TrainingData.from_config(cfg, ctx, resolve_manifest(cfg, ctx))
        results = Trainer(cfg, ctx, data).train()
        for name, r in results.items():
            log.info(f"final verification {name}: accuracy {r['accuracy']:.4f} ± {r['std']:.4f}")
        return 0
    except _expected_errors() as e:
        log.error(f"fftrain: error on rank {ctx.rank}: {e}")
        print(f"fftrain: error on rank {ctx.rank}: {e}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed(ctx)
