"""`fftrain train` (and `torchrun fftrain/train.py`): one training run on this process.

`main` parses the arguments and loads the config; `run_training` does the rest: distributed
set-up, start-up checks, data, trainer, clean errors. The order is what makes a bad setting cost
nothing: every check that can fail on the user's input (the data, the verification files, the
batch size against the data, the checkpoint to resume and what the resume changes) runs before
anything is written to `output_dir`; then global rank 0 takes the folder's lock; then the logs,
the config and the checkpoints are written. A `UserError` ends the run with one line and exit
status 2: a start-up refusal is agreed by all ranks and printed by rank 0 only; an error found
mid-run (a bad record, a diverged loss) is printed by the rank that met it.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import io
import os
import signal
import sys

from fftrain.config import ConfigError, TrainConfig, config_to_dict, dump_config
from fftrain.distributed import (DistContext, StartupTimeout, all_gather_object, destroy_distributed, elastic_run_id,
                                 init_distributed)
from fftrain.errors import EXIT_USER_ERROR, UserError, one_line
from fftrain.training.checkpoint import read_meta, resolve_resume
from fftrain.training.run_log import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fftrain.config import keys_help
    from fftrain.configs import packaged_configs

    parser = argparse.ArgumentParser(prog="fftrain train", description="Train a face-recognition network on "
                                     "several datasets at once (FaceFusion).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys (--set KEY=VALUE; the defaults below are the paper's "
                                     "setting; with no --config the CPU demo, configs/demo_cpu.yaml, replaces "
                                     "some):\n" + keys_help())
    parser.add_argument("--config", help="a packaged config's name (" + ", ".join(packaged_configs()) + ") or a "
                        "YAML file (default: the embedded CPU demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("--resume", help="'auto' (newest complete checkpoint in the run dir), a checkpoint "
                        "folder, or '' to start fresh; same as --set checkpoint.resume=...")
    from fftrain.commands.launch import add_launch_arguments

    add_launch_arguments(parser)
    return parser.parse_args(argv)


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints where every thread of a stuck rank is (stderr must be a real file)."""
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (io.UnsupportedOperation, ValueError, AttributeError):  # stderr replaced, e.g. under pytest capture
        pass


def main(argv: list[str] | None = None) -> int:
    _stacks_on_sigusr1()
    from fftrain.config import load_config
    from fftrain.distributed import launch_rank
    from fftrain.errors import report_user_error
    from fftrain.demo import DEMO_CONFIG

    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume!r}" if args.resume else "checkpoint.resume=''")
    try:
        config_path = config_file(args.config)
        cfg = load_config(config_path, overrides, base=None if args.config else DEMO_CONFIG)
    except UserError as e:  # every rank has the same config: rank 0 says it
        return report_user_error("fftrain", e) if launch_rank() == 0 else EXIT_USER_ERROR
    if args.nproc_per_node is not None:  # the launcher: check here, then start the workers
        from fftrain.commands.launch import launch

        return launch(args, cfg, config_path, check_before_spawn)
    try:
        return run_training(cfg)
    except KeyboardInterrupt:
        return interrupted(launch_rank())


def interrupted(rank: int) -> int:
    """Ctrl-C: no traceback from every rank; one line (from rank 0, or from the launcher that started us)."""
    from fftrain.commands.launch import LAUNCHED_ENV

    if rank == 0 and not os.environ.get(LAUNCHED_ENV):
        print("fftrain: interrupted; the newest complete checkpoint is kept: run the same command again to resume "
              "(checkpoint.resume=auto)", file=sys.stderr, flush=True)
    return 130


def config_file(name_or_path: str | None) -> str | None:
    """`--config`: a packaged config's name or a path; a name that is neither is a ConfigError."""
    from fftrain.configs import packaged_configs, resolve_config

    if name_or_path is None:
        return None
    path = resolve_config(name_or_path)
    if not os.path.exists(path):
        raise ConfigError(f"--config {name_or_path}: no such file and no packaged config of that name "
                          f"(packaged: {', '.join(packaged_configs())})")
    return path


class StartupRefused(UserError):
    """A start-up check failed on at least one rank; every rank raises it with the same message."""


def agree(ctx: DistContext, check):
    """`check()` on every rank (it must not communicate); if it raises a UserError on any rank,
    every rank raises StartupRefused with the lowest failing rank's message, instead of the other
    ranks waiting at their next collective for a rank that has left."""
    try:
        result, message = check(), None
    except UserError as e:
        result, message = None, one_line(e)
    failed = [m for m in all_gather_object(message, ctx.group) if m]
    if failed:
        raise StartupRefused(failed[0])
    return result


def resolve_data(cfg: TrainConfig, ctx: DistContext) -> tuple[TrainConfig, str]:
    """The config and the training set's manifest. For the demo (no manifest) rank 0 generates the
    synthetic set, and its held-out pairs are evaluated unless other .bin files are configured."""
    if cfg.data.manifest:
        return cfg, cfg.data.manifest
    from fftrain.demo import ensure_synthetic_data

    manifest = agree(ctx, lambda: ensure_synthetic_data(cfg.data.synth_dir, cfg.data.synth_preset, cfg.seed,
                                                        generate=ctx.is_main))
    if not cfg.data.verification:
        held_out = os.path.join(cfg.data.synth_dir, "verification.bin")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, verification=[held_out]))
    return cfg, manifest


def check_verification_files(cfg: TrainConfig, ctx: DistContext) -> None:
    """Before the first step, not after the last: every configured .bin must parse, decode and hold
    enough pairs for the 10-fold protocol (this rank's share is decoded now and cached for later)."""
    from recordio_tools.verification_bin import VerificationBinError

    from fftrain.evaluation.metrics import N_FOLDS
    from fftrain.evaluation.verification import load_bin

    missing = [path for path in cfg.data.verification if not os.path.isfile(path)]
    if missing:
        raise ConfigError(f"data.verification: file not found: {', '.join(missing)}")
    for path in cfg.data.verification:
        try:
            _, issame = load_bin(path, part=(ctx.rank, ctx.world_size))
        except VerificationBinError as e:
            raise ConfigError(f"data.verification: {e}") from None
        if len(issame) < N_FOLDS:
            raise ConfigError(f"data.verification: {path}: {len(issame)} pairs; the {N_FOLDS}-fold protocol needs "
                              f"at least {N_FOLDS}")


def check_inputs(cfg: TrainConfig, ctx: DistContext, manifest: str):
    """The training set (its manifest, shards and index) and the verification files; the data."""
    from fftrain.data import TrainingData

    data = TrainingData.from_config(cfg, ctx, manifest)
    check_verification_files(cfg, ctx)
    return data


def check_pretrained(cfg: TrainConfig) -> None:
    """`model.pretrained` (used by a fresh run) must exist and fit the configured backbone."""
    from fftrain.model.backbones import build_backbone
    from fftrain.model.backbones.pretrained import PretrainedError, load_pretrained

    model = build_backbone(cfg.model.backbone, embedding_size=cfg.model.embedding_size, dropout=cfg.model.dropout)
    try:
        load_pretrained(model, cfg.model.pretrained)
    except PretrainedError as e:
        raise ConfigError(f"model.pretrained: {e}") from None


def check_resume(cfg: TrainConfig, ctx: DistContext, data) -> tuple[str | None, dict | None]:
    """The checkpoint this run resumes from and its meta, after the resume rules accepted it."""
    from fftrain.training.resume_rules import check_resume as apply_rules, data_position

    root = os.path.join(cfg.output_dir, "checkpoints")
    try:
        path = resolve_resume(cfg.checkpoint.resume, root, ctx)  # collective; the same outcome on every rank
    except UserError as e:
        raise StartupRefused(one_line(e)) from None
    if path is None:
        return None, None

    def rules():
        meta = read_meta(path)
        allowed = apply_rules(meta, config_to_dict(cfg), path, data.num_records)
        data_position(meta, data.num_records, cfg.data.batch_size * ctx.world_size, cfg.data.order)
        return meta, allowed

    meta, allowed = agree(ctx, rules)
    if ctx.is_main and allowed:
        changes = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in allowed.items())
        print(f"fftrain: resuming from {path} with changed settings: {changes}", flush=True)
    return path, meta


def lock_output(cfg: TrainConfig, ctx: DistContext):
    """Global rank 0 takes `output_dir`'s lock (the first thing written there); None on other ranks."""
    from fftrain.training.output_lock import OutputLock

    def take():
        if not ctx.is_main:
            return None
        return OutputLock(cfg.output_dir, elastic_run_id(), warn=lambda m: print(m, file=sys.stderr)).acquire()

    return agree(ctx, take)


def check_before_spawn(cfg: TrainConfig, world_size: int) -> None:
    """The launcher's check, before any worker starts: the start-up checks of `run_training`, on this one
    process seeing the data split over `world_size` ranks (rank 0 generates the demo set if missing)."""
    import torch

    ctx = DistContext(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"), group=None)
    cfg, manifest = resolve_data(cfg, ctx)
    data = check_inputs(cfg, ctx, manifest)
    resume_path, _ = check_resume(cfg, ctx, data)
    if cfg.model.pretrained and resume_path is None:
        check_pretrained(cfg)


def write_config(cfg: TrainConfig, resume_meta: dict | None) -> None:
    """config.yaml for a fresh run; a resumed run keeps it and adds config-resume-<step>.yaml."""
    from recordio_tools.files import write_text_atomic

    name = "config.yaml" if resume_meta is None else f"config-resume-{resume_meta['step']:08d}.yaml"
    write_text_atomic(os.path.join(cfg.output_dir, name), dump_config(cfg))


def run_training(cfg: TrainConfig) -> int:
    try:
        ctx = init_distributed(cfg.device)
    except StartupTimeout as e:  # not the user's doing: exit 1, and torchrun's next restart round tries again
        print(f"fftrain: {e}", file=sys.stderr)
        return 1
    lock, log = None, None
    try:
        cfg, manifest = resolve_data(cfg, ctx)
        data = agree(ctx, lambda: check_inputs(cfg, ctx, manifest))
        resume_path, resume_meta = check_resume(cfg, ctx, data)
        if cfg.model.pretrained and resume_path is None:
            agree(ctx, lambda: check_pretrained(cfg))
        lock = lock_output(cfg, ctx)
        log = setup_logging(cfg.output_dir, ctx.rank)
        if ctx.is_main:
            write_config(cfg, resume_meta)
        from fftrain.training.trainer import Trainer

        results = Trainer(cfg, ctx, data).train()
        for name, r in results.items():
            log.info(f"final verification {name}: accuracy {r['accuracy']:.4f} ± {r['std']:.4f}")
        return 0
    except UserError as e:
        return report(e, ctx, log)
    except BaseException as e:
        if log is not None and not isinstance(e, (KeyboardInterrupt, SystemExit)):
            log_file = os.path.join(cfg.output_dir, "logs", f"rank{ctx.rank}.log")
            log.exception(f"unexpected error on rank {ctx.rank}")  # into the rank log, whatever torchrun shows
            print(f"fftrain: unexpected error on rank {ctx.rank} ({type(e).__name__}: {e}); its traceback is in "
                  f"{log_file}. torchrun --local-ranks-filter shows rank 0 only: read every "
                  f"{os.path.join(cfg.output_dir, 'logs', 'rank*.log')}", file=sys.stderr)
        raise
    finally:
        if lock is not None:
            lock.release()
        destroy_distributed(ctx)


def report(error: UserError, ctx: DistContext, log) -> int:
    """One line on stderr (and in this rank's log file, if there is one yet); exit status 2."""
    where = f" on rank {ctx.rank}" if ctx.world_size > 1 and not isinstance(error, StartupRefused) else ""
    line = f"fftrain: error{where}: {one_line(error)}"
    if log is not None:
        log.error(line, extra={"console": False})
    if ctx.is_main or not isinstance(error, StartupRefused):
        print(line, file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
