"""When to fuse (`fusion.t2: auto`): the proxies' alignment has plateaued and their top-1 cross-dataset
cosines show two modes with a valley, between a floor and a ceiling.

    watch = ReadinessWatch(floor_step=cfg.t2_floor_step, ceiling_step=cfg.t2_step,
                           every=cfg.fusion.readiness_every, plateau=cfg.fusion.alignment_plateau)
    if watch.due(step):
        check = watch.observe(step, alignment, geometry)    # geometry: a `T1Decision` of the current proxies
        check.ready, check.reason

Alignment is the mean cosine between a sample's embedding and its class proxy over the steps since the
last check (the head computes it anyway: a sum per step, read at the checks). Geometry is the two-mode
fit of `fusion.threshold` on the top-1 cosines of the fusion plan's kNN (nothing applied). Both scale
with the classes the way the fusion step itself does. Pure: numbers in, a verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fftrain.fusion.threshold import T1Decision


@dataclass(frozen=True)
class ReadinessCheck:
    step: int
    alignment: float
    geometry: T1Decision
    ready: bool
    reason: str

    def to_dict(self) -> dict:
        return {"step": self.step, "alignment": self.alignment, "ready": self.ready, "reason": self.reason,
                "valley": self.geometry.merges, "t1": self.geometry.to_dict()["t1"]}


@dataclass
class ReadinessWatch:
    floor_step: int
    ceiling_step: int
    every: int
    plateau: float
    checks: list[ReadinessCheck] = field(default_factory=list)

    def due(self, step: int) -> bool:
        """A check at this step: from the floor on, every `every` steps, and at the ceiling."""
        return step >= self.ceiling_step or (step >= self.floor_step and step % self.every == 0)

    def observe(self, step: int, alignment: float, geometry: T1Decision) -> ReadinessCheck:
        previous = self.checks[-1].alignment if self.checks else None
        gain = None if previous is None else alignment - previous
        plateaued = gain is not None and gain < self.plateau
        aligned = (f"alignment {alignment:.3f}" + ("" if gain is None else f" ({gain:+.3f} since step "
                                                                          f"{self.checks[-1].step})"))
        shape = "two modes with a valley" if geometry.merges else f"no valley ({geometry.reason})"
        if step >= self.ceiling_step:
            ready, why = True, f"ceiling step {self.ceiling_step} reached; {aligned}, {shape}"
        elif plateaued and geometry.merges:
            ready, why = True, f"{aligned}: plateaued (gain < {self.plateau:g}); {shape}"
        else:
            waiting = "not yet plateaued" if not plateaued else "plateaued"
            ready, why = False, f"{aligned}: {waiting}; {shape}"
        check = ReadinessCheck(step, float(alignment), geometry, ready, why)
        self.checks.append(check)
        return check


__all__ = ["ReadinessCheck", "ReadinessWatch"]
