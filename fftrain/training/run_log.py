"""Rank-aware run logging: one fixed step line on rank 0, a log file per rank, metrics.jsonl and
tensorboard scalars on rank 0.

    step   120/2000 | dail | loss cls 8.412 dom 1.790 | lr 0.1000 | 412 img/s | data 3.1 ms | mem 1.2 GiB | eta 4m12s
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

LOGGER_NAME = "fftrain"


def setup_logging(output_dir: str, rank: int) -> logging.Logger:
    """stdout on rank 0 (INFO), `output_dir/logs/rank<r>.log` on every rank (DEBUG)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
    file_handler = logging.FileHandler(os.path.join(output_dir, "logs", f"rank{rank}.log"))
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    if rank == 0:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        stream.setLevel(logging.INFO)
        stream.addFilter(lambda record: getattr(record, "console", True))  # extra={"console": False}: file only
        logger.addHandler(stream)
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class MetricsWriter:
    """metrics.jsonl and tensorboard on rank 0; other ranks write nothing."""

    def __init__(self, output_dir: str, enabled: bool, tensorboard: bool, resume_step: int | None = None):
        self.enabled = enabled
        path = os.path.join(output_dir, "metrics.jsonl")
        if enabled and resume_step is not None:
            drop_rerun_rows(path, resume_step)
        self._jsonl = open(path, "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _kept_after_resume(line: str, resume_step: int) -> bool:
    """Whether a metrics.jsonl row stays when a run resumes from the checkpoint of `resume_step`: the rows of
    earlier steps, and that step's training row (written before its checkpoint); its verification rows
    (written after) and every later row are written again by the resumed run."""
    try:
        row = json.loads(line)
        step = row["step"]
    except (ValueError, TypeError, KeyError):
        return False  # a line torn by a kill
    if not isinstance(step, int) or step > resume_step:
        return False
    return step < resume_step or not any(key.startswith("verification/") for key in row)


def drop_rerun_rows(path: str, resume_step: int) -> None:
    """Rewrite metrics.jsonl (atomically) without the rows a run resumed from `resume_step` writes again, so
    every step has its rows once."""
    from recordio_tools.files import write_text_atomic

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    kept = [line for line in lines if _kept_after_resume(line, resume_step)]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


class Throughput:
    """Images/s and ETA over the steps since the last report."""

    def __init__(self, start_step: int, total_steps: int):
        self.total_steps = total_steps
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int, images_per_step: int) -> tuple[float, float]:
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        seconds_per_step = (now - self._last_time) / steps
        self._last_step, self._last_time = step, now
        return images_per_step / seconds_per_step, seconds_per_step * (self.total_steps - step)
