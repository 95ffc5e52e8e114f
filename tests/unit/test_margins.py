import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fftrain.head.margins import ArcFace, CombinedMargin, CosFace, build_margin


def _target(margin, cos):
    """The margin's positive logit for each c in `cos` (unscaled), through the public call."""
    out = margin(cos.unsqueeze(1), torch.zeros(len(cos), dtype=torch.long))
    return out.squeeze(1) / margin.scale


def test_formulas_match_their_definitions_away_from_the_ends():
    cos = torch.linspace(-0.85, 0.999, 101, dtype=torch.float64, requires_grad=True)
    theta = torch.acos(cos)
    cases = [(ArcFace(2.0, 0.5), torch.cos(theta + 0.5)),
             (CosFace(2.0, 0.35), cos - 0.35),
             (CombinedMargin(2.0, 0.9, 0.3, 0.1), torch.cos(0.9 * theta + 0.3) - 0.1),
             (CombinedMargin(2.0, 1.0, 0.5, 0.0), torch.cos(theta + 0.5)),
             (CombinedMargin(2.0, 1.0, 0.0, 0.35), cos - 0.35)]
    for margin, expected in cases:
        got = _target(margin, cos)
        torch.testing.assert_close(got, expected)
        g_got, = torch.autograd.grad(got.sum(), cos, retain_graph=True)
        g_exp, = torch.autograd.grad(expected.sum(), cos, retain_graph=True)
        torch.testing.assert_close(g_got, g_exp, msg=str(margin))


def test_only_the_positive_changes_and_everything_is_scaled():
    cos = torch.rand(3, 5) * 2 - 1
    target = torch.tensor([2, -1, 0])
    out = ArcFace(64.0, 0.5)(cos, target)
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[0, 2] = keep[2, 0] = False
    torch.testing.assert_close(out[keep], 64.0 * cos[keep])
    assert out[0, 2] < 64.0 * cos[0, 2] and out[2, 0] < 64.0 * cos[2, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", [ArcFace(64.0, 0.5), CosFace(64.0, 0.4), CombinedMargin(64.0, 0.9, 0.4, 0.15)],
                         ids=["arc", "cos", "combined"])
def test_values_and_gradients_are_finite_at_and_near_the_ends(margin, dtype):
    eps = torch.finfo(dtype).eps
    cos = torch.tensor([-1.0, -1.0 + eps, -0.5, 0.0, 1.0 - eps, 1.0], dtype=dtype, requires_grad=True)
    out = _target(margin, cos)
    grad, = torch.autograd.grad(out.sum(), cos)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 1.5))
def test_arcface_target_logit_decreases_with_the_angle(m):
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    logit = _target(ArcFace(1.0, m), torch.cos(theta))
    assert bool((logit[1:] <= logit[:-1] + 1e-12).all())


def test_registry():
    assert build_margin("ArcFace", scale=32.0, margin=0.3) == ArcFace(32.0, 0.3)
    assert isinstance(build_margin("cosface"), CosFace)
    assert build_margin("combined", m1=1.0, m2=0.3, m3=0.2) == CombinedMargin(64.0, 1.0, 0.3, 0.2)
    choices = r"\['arcface', 'combined', 'cosface'\]"
    with pytest.raises(ValueError, match=r"unknown margin 'sphereface'; available: " + choices):
        build_margin("sphereface")


def test_bad_parameters():
    with pytest.raises(ValueError, match="scale must be > 0, got 0"):
        ArcFace(scale=0)
    with pytest.raises(ValueError, match=r"arcface margin must be in \[0, pi/2\), got 2.0"):
        ArcFace(margin=2.0)
    with pytest.raises(ValueError, match="cosface margin must be >= 0, got -0.1"):
        CosFace(margin=-0.1)
    with pytest.raises(ValueError, match=r"combined margin needs m1 > 0, m2 >= 0, m3 >= 0; got \(0.0, 0.5, 0.0\)"):
        CombinedMargin(m1=0.0)
