"""One training run on this process: distributed set-up, data, trainer, clean errors.

Called by fftrain/train.py after the config is loaded. Expected failures (bad data, a checkpoint
that does not fit, a diverged loss) end with one message naming the file or step, exit code 1.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from .config import ConfigError, TrainConfig, dump_config
from .distributed import DistContext, barrier, destroy_distributed, init_distributed
from .run_log import setup_logging


def resolve_data(cfg: TrainConfig, ctx: DistContext) -> tuple[TrainConfig, str]:
    """The config and the training set's manifest. For the demo (no manifest) rank 0 generates the
    synthetic set, and its held-out pairs are evaluated unless other .bin files are configured."""
    if cfg.data.manifest:
        return cfg, cfg.data.manifest
    from .demo import ensure_synthetic_data

    if ctx.is_main:
        manifest = ensure_synthetic_data(cfg.data.synth_dir, cfg.data.synth_preset, cfg.seed)
    barrier(ctx.group)
    if not ctx.is_main:
        manifest = ensure_synthetic_data(cfg.data.synth_dir, cfg.data.synth_preset, cfg.seed)
    if not cfg.data.verification:
        held_out = os.path.join(cfg.data.synth_dir, "verification.bin")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, verification=[held_out]))
    return cfg, manifest


def check_verification_files(cfg: TrainConfig) -> None:
    """Before the first step, not after the last: every configured .bin file must exist."""
    missing = [path for path in cfg.data.verification if not os.path.isfile(path)]
    if missing:
        raise ConfigError(f"data.verification: file not found: {', '.join(missing)}")


def _expected_errors() -> tuple[type[BaseException], ...]:
    from recordio_tools.manifest import ManifestError
    from recordio_tools.recordio import RecordIOError

    from recordio_tools.verification_bin import VerificationBinError

    from .checkpoint import CheckpointError
    from .data.records import DataError
    from .trainer import TrainingDiverged

    return (ManifestError, RecordIOError, VerificationBinError, CheckpointError, ConfigError, DataError,
            TrainingDiverged)


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

        cfg, manifest = resolve_data(cfg, ctx)
        check_verification_files(cfg)
        data = TrainingData.from_config(cfg, ctx, manifest)
        results = Trainer(cfg, ctx, data).train()
        for name, r in results.items():
            log.info(f"final verification {name}: accuracy {r['accuracy']:.4f} ± {r['std']:.4f}")
        return 0
    except _expected_errors() as e:
        log.error(f"fftrain: error on rank {ctx.rank}: {e}")
        print(f"fftrain: error on rank {ctx.rank}: {e}", file=sys.stderr)
        return 1
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            log_file = os.path.join(cfg.output_dir, "logs", f"rank{ctx.rank}.log")
            log.exception(f"unexpected error on rank {ctx.rank}")  # into the rank log, whatever torchrun shows
            print(f"fftrain: unexpected error on rank {ctx.rank} ({type(e).__name__}: {e}); its traceback is in "
                  f"{log_file}. torchrun --local-ranks-filter shows rank 0 only: read every "
                  f"{os.path.join(cfg.output_dir, 'logs', 'rank*.log')}", file=sys.stderr)
        raise
    finally:
        destroy_distributed(ctx)
