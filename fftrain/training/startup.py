"""A run's start-up, resolved once and handed to the trainer: the checkpoint to resume and its meta, the
pretrained backbone weights, the data, the output folder's lock.

    started = start_up(cfg, ctx)      # collective; a UserError (StartupRefused) agreed by every rank
    Trainer(started.cfg, ctx, started.data, started.point).train()

Global rank 0 takes `output_dir`'s lock first (the only write before the checks, removed on a refusal),
so that the folder, the checkpoint to resume included, is read only under it. The checks then run in the
order that makes a bad setting cost least: the resume path and its meta (a missing `--resume` folder
fails first), the pretrained weights, then the data (for the demo, the synthetic set is generated here),
the verification files, the resume rules against the data.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

from fftrain.config import ConfigError, TrainConfig, config_to_dict
from fftrain.distributed import DistContext, all_gather_object, elastic_run_id
from fftrain.errors import UserError, one_line
from fftrain.training.checkpoint import read_meta, resolve_resume


class StartupRefused(UserError):
    """A start-up check failed on at least one rank; every rank raises it with the same message."""


@dataclass(frozen=True)
class StartPoint:
    """Where the trainer's state comes from: a checkpoint (path and meta, the resume rules passed), or,
    for a fresh run, the pretrained backbone weights (None: random init)."""

    resume_path: str | None = None
    resume_meta: dict | None = None
    pretrained: dict | None = None
    """The backbone's state dict after `model.pretrained` was loaded into it (checked to fit)."""


@dataclass
class Started:
    cfg: TrainConfig
    """The config as the run uses it (the demo's held-out pairs filled in)."""
    data: object
    """The `fftrain.data.TrainingData`."""
    point: StartPoint
    lock: object | None
    """Global rank 0's `OutputLock` (release it at the end); None on the other ranks."""


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


def start_up(cfg: TrainConfig, ctx: DistContext) -> Started:
    """The lock, then every start-up check, fastest failure first (collective); nothing else written.
    The lock comes first so that the folder is read only under it: `--resume auto` never takes a running
    trainer's checkpoints, half pruned, for damage. A refusal releases the lock and removes the folder if
    the lock created it."""
    created = not os.path.exists(cfg.output_dir)
    lock = lock_output(cfg, ctx)
    try:
        cfg, data, point = checked_start(cfg, ctx)
    except BaseException:
        if lock is not None:
            lock.release()
            if created:
                _remove_if_empty(cfg.output_dir)
        raise
    return Started(cfg, data, point, lock)


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:  # not empty: something else is there
        pass


def checked_start(cfg: TrainConfig, ctx: DistContext) -> tuple[TrainConfig, object, StartPoint]:
    """The checks of `start_up` without the lock: resume point, pretrained weights, data, resume rules."""
    resume_path, resume_meta = resume_point(cfg, ctx)
    pretrained = agree(ctx, lambda: pretrained_weights(cfg)) if cfg.model.pretrained and not resume_path else None
    cfg, manifest = resolve_data(cfg, ctx)
    data = agree(ctx, lambda: check_inputs(cfg, ctx, manifest))
    if resume_path:
        check_resume_rules(cfg, ctx, data, resume_path, resume_meta)
    return cfg, data, StartPoint(resume_path, resume_meta, pretrained)


def check_before_spawn(cfg: TrainConfig, world_size: int) -> None:
    """The launcher's check, before any worker starts: the start-up checks, on this one process seeing the
    data split over `world_size` ranks (rank 0 generates the demo set if missing)."""
    import torch

    checked_start(cfg, DistContext(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"), group=None))


def resume_point(cfg: TrainConfig, ctx: DistContext) -> tuple[str | None, dict | None]:
    """The checkpoint `checkpoint.resume` names (collective; the same outcome on every rank) and its meta."""
    root = os.path.join(cfg.output_dir, "checkpoints")
    try:
        path = resolve_resume(cfg.checkpoint.resume, root, ctx)
    except UserError as e:
        raise StartupRefused(one_line(e)) from None
    if path is None:
        return None, None
    return path, agree(ctx, lambda: read_meta(path))


def start_point(cfg: TrainConfig, ctx: DistContext) -> StartPoint:
    """The start point alone, for a caller that built the data itself (tests, benchmarks)."""
    resume_path, resume_meta = resume_point(cfg, ctx)
    pretrained = pretrained_weights(cfg) if cfg.model.pretrained and not resume_path else None
    return StartPoint(resume_path, resume_meta, pretrained)


def pretrained_weights(cfg: TrainConfig) -> dict:
    """`model.pretrained` loaded into the configured backbone (it must exist and fit); its state dict."""
    from fftrain.model.backbones import build_backbone
    from fftrain.model.backbones.pretrained import PretrainedError, load_pretrained

    model = build_backbone(cfg.model.backbone, embedding_size=cfg.model.embedding_size, dropout=cfg.model.dropout,
                           grad_checkpoint=cfg.model.grad_checkpoint)
    try:
        load_pretrained(model, cfg.model.pretrained)
    except PretrainedError as e:
        raise ConfigError(f"model.pretrained: {e}") from None
    return model.state_dict()


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

    from fftrain.evaluation.verification import check_pair_count, load_bin

    missing = [path for path in cfg.data.verification if not os.path.isfile(path)]
    if missing:
        raise ConfigError(f"data.verification: file not found: {', '.join(missing)}")
    for path in cfg.data.verification:
        try:
            _, issame = load_bin(path, part=(ctx.rank, ctx.world_size))
            check_pair_count(path, len(issame))  # the check `fftrain eval` makes too
        except VerificationBinError as e:
            raise ConfigError(f"data.verification: {e}") from None


def check_inputs(cfg: TrainConfig, ctx: DistContext, manifest: str):
    """The training set (its manifest, shards and index) and the verification files; the data."""
    from fftrain.data import TrainingData

    data = TrainingData.from_config(cfg, ctx, manifest)
    check_verification_files(cfg, ctx)
    return data


def check_resume_rules(cfg: TrainConfig, ctx: DistContext, data, path: str, meta: dict) -> None:
    """The resume rules: what the config may change against the checkpoint's, and the data position."""
    from fftrain.training.resume_rules import check_resume as apply_rules, data_position

    def rules():
        allowed = apply_rules(meta, config_to_dict(cfg), path, data.num_records)
        data_position(meta, data.num_records, cfg.data.batch_size * ctx.world_size, cfg.data.order)
        return allowed

    allowed = agree(ctx, rules)
    if ctx.is_main and allowed:
        changes = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in allowed.items())
        print(f"fftrain: resuming from {path} with changed settings: {changes}", flush=True)


def lock_output(cfg: TrainConfig, ctx: DistContext):
    """Global rank 0 takes `output_dir`'s lock (the first thing written there); None on other ranks."""
    from fftrain.training.output_lock import OutputLock

    def take():
        if not ctx.is_main:
            return None
        return OutputLock(cfg.output_dir, elastic_run_id(), warn=lambda m: print(m, file=sys.stderr)).acquire()

    return agree(ctx, take)
