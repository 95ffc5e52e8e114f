"""T1 from the proxy geometry (`fusion.t1: auto`): the valley of the top-1 cross-dataset cosines.

    decision = choose_t1(top1, config)     # top1: every proxy's best cosine to a class of another dataset
    decision.merges                        # False: no valley, nothing merges (decision.reason says why)
    decision.t1, decision.precision, decision.recall, decision.line()

Duplicated identities put their proxies' top-1 cosine in a high mode, every other class in a low one.
The two-Weibull mixture of `fftrain.calibration.modes` (the one fit the project has) gives the valley
between them, Ashman's D (how far apart they are) and, under the fit, the precision and recall of
merging above the chosen threshold. Pure: numbers in, a decision out; the caller gathers the cosines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fftrain.config import FusionConfig

MIN_SCORES = 20
"""Fewer finite top-1 cosines than this: no fit is attempted (no valley)."""
FIT_SAMPLE = 200_000
"""At most this many top-1 cosines go into a two-mode fit (its cost stays bounded at any class count)."""


@dataclass(frozen=True)
class T1Decision:
    mode: str
    """'fixed' (the configured number), 'valley' (auto, merging) or 'no_valley' (auto, not merging)."""
    t1: float
    """The threshold used (inf when nothing merges)."""
    reason: str
    precision: float | None = None
    recall: float | None = None
    """Estimated under the fitted mixture (None for a fixed T1 or without a fit)."""
    valley: float | None = None
    ashman_d: float | None = None
    modes: dict | None = None
    """The fit (`TwoModes.to_dict`), None without one."""

    @property
    def merges(self) -> bool:
        return self.mode != "no_valley"

    def line(self) -> str:
        """One line for the log."""
        if self.mode == "fixed":
            return f"T1 {self.t1:g} (fixed)"
        if not self.merges:
            return f"T1 auto: no merge: {self.reason}"
        return (f"T1 auto = {self.t1:.3f} ({self.reason}); estimated merge precision {self.precision:.3f}, "
                f"recall {self.recall:.3f}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["t1"] = None if not np.isfinite(self.t1) else self.t1
        out["merges"] = self.merges
        return out


def choose_t1(top1, config: FusionConfig) -> T1Decision:
    """The threshold of `config` (a number), or the valley of `top1` within [t1_min, t1_max] (auto)."""
    if not config.t1_auto:
        return T1Decision("fixed", float(config.t1), "configured")
    from fftrain.calibration.modes import FitError, fit_two_modes  # scipy: only when T1 is auto

    scores = np.asarray(top1, dtype=np.float64).ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size < MIN_SCORES:
        return _refuse(f"{scores.size} top-1 cosines, a two-mode fit needs >= {MIN_SCORES}")
    try:
        modes = fit_two_modes(np.clip(scores, -1.0, 1.0), min_d=config.min_separation)
    except FitError as e:
        return _refuse(f"the top-1 cosines cannot be split into two modes ({e})")
    if not modes.separated:
        return _refuse(modes.explain(), modes)
    t1 = float(np.clip(modes.valley, config.t1_min, config.t1_max))
    bounded = "" if t1 == modes.valley else f", bounded to [{config.t1_min:g}, {config.t1_max:g}]"
    precision, recall = modes.precision_recall(t1)
    return T1Decision("valley", t1, f"valley {modes.valley:.3f}{bounded}; Ashman's D {modes.ashman_d:.2f}",
                      precision=precision, recall=recall, valley=modes.valley, ashman_d=modes.ashman_d,
                      modes=modes.to_dict())


def _refuse(reason: str, modes=None) -> T1Decision:
    return T1Decision("no_valley", float("inf"), reason, valley=None if modes is None else modes.valley,
                      ashman_d=None if modes is None else modes.ashman_d,
                      modes=None if modes is None else modes.to_dict())


__all__ = ["T1Decision", "choose_t1"]
