"""Row-wise all-gather across a process group, with and without a gradient.

Every rank contributes a tensor of the same shape [B, ...]; the result is the concatenation
[W * B, ...] in rank order. With `group=None` (or a group of one) nothing is communicated.

`all_gather_rows_with_grad` is differentiable: the backward sums, over ranks, the gradients that
each rank computed for the whole gathered tensor and hands rank r the rows it contributed (a
reduce-scatter; NCCL does it natively, gloo, which has no reduce-scatter, by all-reduce and
slice), then multiplies by `grad_scale`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fftrain.distributed import check_comm_tensor, is_nccl, rank_of, world_size_of


def _is_single(group: dist.ProcessGroup | None) -> bool:
    return group is None or world_size_of(group) == 1


def _gather(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    x = check_comm_tensor(x.contiguous(), group, "all_gather_rows")
    world = world_size_of(group)
    if is_nccl(group):
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(out, x, group=group)
        return out
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts)


def _reduce_scatter(grad: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    grad = check_comm_tensor(grad.contiguous(), group, "reduce_scatter_rows")
    world = world_size_of(group)
    if is_nccl(group):
        out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad, group=group)
        return out
    dist.all_reduce(grad, group=group)
    return grad.chunk(world)[rank_of(group)].clone()


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, grad_scale):
        ctx.group, ctx.grad_scale = group, grad_scale
        return _gather(x, group)

    @staticmethod
    def backward(ctx, grad):
        out = _reduce_scatter(grad, ctx.group)
        if ctx.grad_scale != 1.0:
            out = out * ctx.grad_scale
        return out, None, None


def all_gather_rows(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """[B, ...] on each rank -> [W * B, ...] everywhere; no gradient."""
    if _is_single(group):
        return x
    with torch.no_grad():
        return _gather(x, group)


def all_gather_rows_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None, *,
                              grad_scale: float = 1.0) -> torch.Tensor:
    """Differentiable `all_gather_rows`; rank r's input gets grad_scale * (sum over ranks of the
    gradient of its rows). Every rank must run the backward."""
    if _is_single(group):
        return x if grad_scale == 1.0 else scale_grad(x, grad_scale)
    return _AllGatherRows.apply(x, group, grad_scale)


class _ScaleGrad(torch.autograd.Function):
    """y = x; dL/dx = scale * dL/dy."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The identity forward; the gradient multiplied by `scale` backward (a negative scale reverses it)."""
    return _ScaleGrad.apply(x, scale)
