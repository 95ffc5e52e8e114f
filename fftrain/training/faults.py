"""Planned faults, for the resilience tests and benchmarks/fault_injection.py.

    FFTRAIN_FAULT="save@6:1,eval@10:0" FFTRAIN_FAULT_DIR=/tmp/faults torchrun ... fftrain/train.py ...

makes rank 1 SIGKILL itself inside the checkpoint save of step 6 (after the shards are written, before the
folder is committed), and rank 0 at the start of the evaluation at step 10. Moments: `step` (before step N's
batch), `save`, `fusion` (the fusion step, before its kNN), `fusion_save` (the checkpoint written right after
fusion), `eval`. Each fault fires once: the rank first records it in FFTRAIN_FAULT_DIR, so its restarted self
goes past. Without FFTRAIN_FAULT this costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

MOMENTS = ("step", "save", "fusion", "fusion_save", "eval")


def parse_faults(spec: str) -> list[tuple[str, int, int]]:
    """'save@6:1,eval@10:0' -> [('save', 6, 1), ('eval', 10, 0)]."""
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            moment, rest = item.split("@")
            step, rank = rest.split(":")
            fault = (moment, int(step), int(rank))
        except ValueError:
            raise ValueError(f"FFTRAIN_FAULT: {item!r} is not MOMENT@STEP:RANK") from None
        if moment not in MOMENTS:
            raise ValueError(f"FFTRAIN_FAULT: unknown moment {moment!r}; choose from {', '.join(MOMENTS)}")
        faults.append(fault)
    return faults


def fault_point(moment: str, step: int, rank: int) -> None:
    spec = os.environ.get("FFTRAIN_FAULT")
    if not spec or (moment, step, rank) not in parse_faults(spec):
        return
    record = os.path.join(os.environ["FFTRAIN_FAULT_DIR"], f"{moment}@{step}:{rank}")
    try:
        fd = os.open(record, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"pid {os.getpid()}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
