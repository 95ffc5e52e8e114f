"""Step learning-rate schedule: linear warm-up, then multiply by `lr_decay` at each milestone."""

from __future__ import annotations

import bisect

from fftrain.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based). A pure function, so resume needs no state."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * cfg.lr_decay ** bisect.bisect_right(cfg.lr_milestones, step)
