"""Additive angular / cosine margins applied to the positive logit.

A margin maps cosine logits `cos[N, S]` and the column of each row's positive `target[N]`
(-1 where the positive is not among the S columns) to scaled logits: every entry becomes
`scale * cos`, except the positive, which becomes `scale * f(cos_y)`:

    ArcFace(s, m):              f(c) = cos(acos(c) + m)
    CosFace(s, m):              f(c) = c - m
    CombinedMargin(s, m1, m2, m3): f(c) = cos(m1 * acos(c) + m2) - m3

Gradients are exact (autograd through the formula, no straight-through) and finite for every
c in [-1, 1]: sin(theta) is clamped away from 0 by the dtype's epsilon. ArcFace keeps the
target logit decreasing in theta past theta + m > pi by switching to c - m * sin(m) there
(insightface's rule); the general combined form does not.

    margin = build_margin("arcface", scale=64.0, margin=0.5)
    logits = margin(cos, target)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _sin_of(cos: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(cos.dtype).eps
    return (1.0 - cos * cos).clamp_min(eps).sqrt()


class Margin:
    """Base: subclasses define `scale` and `target_logit(cos_y)`; calling applies both."""

    scale: float

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scaled logits [N, S]; `target[i]` is row i's positive column or -1 for none.

        No host sync: rows without a positive scatter their column-0 value back unchanged.
        """
        column = target.clamp_min(0).unsqueeze(1)
        cos_y = cos.gather(1, column)
        new_y = torch.where(target.unsqueeze(1) >= 0, self.target_logit(cos_y), cos_y)
        return cos.scatter(1, column, new_y).mul_(self.scale)


def _check_scale(scale: float) -> None:
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")


@dataclass(frozen=True)
class ArcFace(Margin):
    """Additive angular margin: s * cos(theta_y + m)."""

    scale: float = 64.0
    margin: float = 0.5

    def __post_init__(self):
        _check_scale(self.scale)
        if not 0 <= self.margin < math.pi / 2:
            raise ValueError(f"arcface margin must be in [0, pi/2), got {self.margin}")

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        m = self.margin
        shifted = cos_y * math.cos(m) - _sin_of(cos_y) * math.sin(m)
        return torch.where(cos_y > math.cos(math.pi - m), shifted, cos_y - math.sin(math.pi - m) * m)


@dataclass(frozen=True)
class CosFace(Margin):
    """Additive cosine margin: s * (cos theta_y - m)."""

    scale: float = 64.0
    margin: float = 0.4

    def __post_init__(self):
        _check_scale(self.scale)
        if self.margin < 0:
            raise ValueError(f"cosface margin must be >= 0, got {self.margin}")

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        return cos_y - self.margin


@dataclass(frozen=True)
class CombinedMargin(Margin):
    """insightface's combined form: s * (cos(m1 * theta_y + m2) - m3).

    (1, m, 0) is ArcFace (and uses its monotonic rule), (1, 0, m) is CosFace.
    """

    scale: float = 64.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0

    def __post_init__(self):
        _check_scale(self.scale)
        if self.m1 <= 0 or self.m2 < 0 or self.m3 < 0:
            raise ValueError(f"combined margin needs m1 > 0, m2 >= 0, m3 >= 0; got "
                             f"({self.m1}, {self.m2}, {self.m3})")

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m3 == 0.0:
            return ArcFace(self.scale, self.m2).target_logit(cos_y)
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos_y - self.m3
        eps = torch.finfo(cos_y.dtype).eps
        theta = cos_y.clamp(-1.0 + eps, 1.0 - eps).acos()
        return torch.cos(self.m1 * theta + self.m2) - self.m3


MARGINS: dict[str, type[Margin]] = {"arcface": ArcFace, "cosface": CosFace, "combined": CombinedMargin}


def build_margin(name: str, **kwargs) -> Margin:
    """A margin by registry name; keyword arguments go to its dataclass (see MARGINS)."""
    try:
        cls = MARGINS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown margin {name!r}; available: {sorted(MARGINS)}") from None
    return cls(**kwargs)
