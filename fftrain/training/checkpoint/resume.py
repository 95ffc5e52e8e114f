"""Which checkpoint a run resumes from: `auto` (the newest readable one), none, or a given path."""

from __future__ import annotations

from fftrain.distributed import DistContext, broadcast_object
from fftrain.training.checkpoint.layout import CheckpointError, complete_checkpoints
from fftrain.training.checkpoint.safe_read import check_complete
from fftrain.training.run_log import get_logger

def resolve_resume(resume: str, root: str, ctx: DistContext) -> str | None:
    """'auto' -> newest complete checkpoint (or None); '' -> None; else the given path, which must exist.
    A newest checkpoint that is truncated or unreadable is skipped with a warning naming the file, for the
    previous one. Rank 0 decides and broadcasts so every rank resumes from the same one."""
    if not resume:
        return None
    decision = _try_decide_resume(resume, root) if ctx.is_main else None
    path, error = broadcast_object(decision, ctx.group)
    if error:
        raise CheckpointError(error)
    return path


def _try_decide_resume(resume: str, root: str) -> tuple[str | None, str | None]:
    try:
        return _decide_resume(resume, root), None
    except CheckpointError as e:
        return None, str(e)


def _decide_resume(resume: str, root: str) -> str | None:
    if resume != "auto":
        check_complete(resume)
        return resume
    found = complete_checkpoints(root)
    for _, path in reversed(found):
        try:
            check_complete(path)
            return path
        except CheckpointError as e:
            get_logger().warning(f"fftrain: warning: {e}; skipping {path} for the previous complete checkpoint")
    if found:
        raise CheckpointError(f"{root}: no readable checkpoint ({len(found)} found, each damaged; see the warnings)")
    return None

