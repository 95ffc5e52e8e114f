"""MobileFaceNet, key-compatible with insightface arcface_torch `backbones/mobilefacenet.py`.

`mobilefacenet()` matches insightface's "mbf" (scale 2, blocks (1, 4, 6, 2)) and
`mobilefacenet(scale=4, blocks=(2, 8, 12, 4))` its "mbf_large". Key layout:

    layers.{0..7}          stem conv, stage-1 conv (or residual stack), then three
                           (stride-2 bottleneck, residual stack) pairs
    conv_sep               1x1 conv to 512 channels
    features.layers.{0,2,3}  GDC head: 7x7 depthwise conv + BN, (flatten), Linear, BN1d

Every block keeps insightface's nesting (`.layers` sequentials), which is what fixes the names.
As in `iresnet`, there is no fp16 flag: the caller owns autocast, and conv_sep + the GDC head run
in the parameters' dtype (fp32 under autocast), as insightface does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fftrain.model.backbones.common import check_input, checkpointed, fp32_region


class ConvBNPReLU(nn.Module):
    """Conv (no bias) -> BN -> PReLU; insightface's `ConvBlock`."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvBN(nn.Module):
    """Conv (no bias) -> BN, no activation; insightface's `LinearBlock`."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Bottleneck(nn.Module):
    """1x1 expand to `hidden` -> 3x3 depthwise (stride) -> 1x1 linear projection; insightface's
    `DepthWise`. With `residual` the input is added (needs stride 1 and cin == cout)."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int = 1, residual: bool = False) -> None:
        super().__init__()
        if residual and (stride != 1 or cin != cout):
            raise ValueError(f"a residual bottleneck needs stride 1 and cin == cout, got stride "
                             f"{stride}, {cin} -> {cout}")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBNPReLU(cin, hidden),
            ConvBNPReLU(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden),
            ConvBN(hidden, cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class ResidualStack(nn.Module):
    """`n` residual bottlenecks at constant width; insightface's `Residual`."""

    def __init__(self, channels: int, n: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[Bottleneck(channels, channels, hidden, residual=True) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: 7x7 depthwise conv + BN -> flatten -> Linear -> BN1d.

    Index 1 of `layers` is the (parameter-free) flatten, kept so the Linear stays `layers.2`.
    """

    def __init__(self, channels: int, embedding_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBN(channels, channels, kernel=7, groups=channels),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, flatten, linear, bn = self.layers
        return bn(linear(self.dropout(flatten(conv(x)))))


class MobileFaceNet(nn.Module):
    """MobileFaceNet: [B, 3, 112, 112] in [-1, 1] -> [B, embedding_size] (not normalised).

    Args:
        embedding_size: output dimension.
        blocks: residual bottlenecks in the four stages; blocks[0] == 1 means a single grouped
            3x3 conv in stage 1 (insightface's layout), not a residual stack.
        scale: width multiplier: stages have 64*scale and 128*scale channels.
        dropout: dropout probability before the head's Linear (absent in insightface; no keys).
        grad_checkpoint: checkpoint each entry of `layers` in training.
        fp32_head: run conv_sep + features with the caller's autocast switched off.
    """

    input_size = 112

    def __init__(
        self,
        *,
        embedding_size: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        dropout: float = 0.0,
        grad_checkpoint: bool = False,
        fp32_head: bool = True,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four positive counts, got {list(blocks)}")
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.grad_checkpoint = grad_checkpoint
        self.fp32_head = fp32_head
        c1, c2 = 64 * scale, 128 * scale
        # Hidden widths of the bottlenecks are insightface's fixed numbers (independent of scale).
        stage1: nn.Module
        if blocks[0] == 1:
            stage1 = ConvBNPReLU(c1, c1, kernel=3, padding=1, groups=64)
        else:
            stage1 = ResidualStack(c1, blocks[0], hidden=128)
        self.layers = nn.Sequential(
            ConvBNPReLU(3, c1, kernel=3, stride=2, padding=1),
            stage1,
            Bottleneck(c1, c1, hidden=128, stride=2),
            ResidualStack(c1, blocks[1], hidden=128),
            Bottleneck(c1, c2, hidden=256, stride=2),
            ResidualStack(c2, blocks[2], hidden=256),
            Bottleneck(c2, c2, hidden=512, stride=2),
            ResidualStack(c2, blocks[3], hidden=256),
        )
        self.conv_sep = ConvBNPReLU(c2, 512)
        self.features = GDC(512, embedding_size, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_size)
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            for stage in self.layers:
                x = checkpointed(stage, x)
        else:
            x = self.layers(x)
        with fp32_region(x, self.fp32_head):
            x = self.features(self.conv_sep(x.to(self.features.layers[2].weight.dtype)))
        return x


def mobilefacenet(**kw) -> MobileFaceNet:
    """insightface's "mbf"; `kw` go to `MobileFaceNet`."""
    return MobileFaceNet(**kw)


def mobilefacenet_large(**kw) -> MobileFaceNet:
    """insightface's "mbf_large": scale 4, blocks (2, 8, 12, 4)."""
    kw.setdefault("scale", 4)
    kw.setdefault("blocks", (2, 8, 12, 4))
    return MobileFaceNet(**kw)
