"""Improved ResNet (IResNet) for 112x112 faces, key-compatible with insightface arcface_torch.

A model built here has the same `state_dict` keys and shapes as insightface's
`recognition/arcface_torch/backbones/iresnet.py`, so its published `backbone.pth` files load
with `fftrain.model.backbones.load_pretrained`:

    conv1, bn1, prelu                          stem, 3x3, width[0] channels
    layer{1..4}.{i}.{bn1,conv1,bn2,prelu,conv2,bn3}
    layer{1..4}.0.downsample.{0,1}             1x1 stride-2 conv + BN on every stage's first block
    bn2, fc, features                          BN2d, Linear(C*7*7 -> D), BN1d with weight fixed at 1

Differences from insightface, none of which changes a key: no `fp16` flag (the caller owns
autocast; the head fc + features still runs in the parameters' dtype, fp32 under autocast, as
insightface does), gradient checkpointing is a constructor argument rather than a module global,
dropout is not in-place, and widths, stem stride and input size are parameters (for the small
CPU demo network, `iresnet_tiny`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fftrain.model.backbones.common import check_input, checkpointed, fp32_region

#: Blocks per stage of the published depths.
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN, plus shortcut.

    The stride sits on the second conv, as in insightface.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet backbone: [B, 3, S, S] in [-1, 1] -> [B, embedding_size] (not normalised).

    Args:
        layers: residual blocks in each of the four stages, e.g. (3, 4, 14, 3) for iresnet50.
        widths: channels of the four stages; the stem has widths[0]. Published nets: 64..512.
        embedding_size: output dimension.
        dropout: dropout probability before the fc.
        grad_checkpoint: checkpoint every residual block in training (only block inputs are
            kept; activations are recomputed in backward).
        input_size: side S of the square input (112 for the published nets: a 7x7 final map).
        stem_stride: stride of the stem conv; 1 in the published nets, 2 in the CPU demo net
            (halves every feature map: 4x4 at the end for 112x112 inputs).
        fp32_head: run fc + features with the caller's autocast switched off.
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        dropout: float = 0.0,
        grad_checkpoint: bool = False,
        input_size: int = 112,
        stem_stride: int = 1,
        fp32_head: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {list(layers)}")
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be four positive channel counts, got {list(widths)}")
        if input_size < 16:
            raise ValueError(f"input_size must be at least 16, got {input_size}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        self.input_size = input_size
        self.grad_checkpoint = grad_checkpoint
        self.fp32_head = fp32_head

        self.conv1 = _conv3x3(3, widths[0], stem_stride)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        cin = widths[0]
        stages = []
        for n_blocks, cout in zip(layers, widths):
            stages.append(self._make_stage(cin, cout, n_blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        side = input_size
        for _ in range(4 if stem_stride == 1 else 5):
            side = (side + 1) // 2  # a stride-2 3x3 conv with padding 1
        self.fc = nn.Linear(cin * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        self._init_weights()

    @staticmethod
    def _make_stage(cin: int, cout: int, n_blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
        )
        blocks = [IBasicBlock(cin, cout, stride=2, downsample=downsample)]
        blocks += [IBasicBlock(cout, cout) for _ in range(n_blocks - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # insightface's initialisation: N(0, 0.1) convs, unit BN, default Linear; the embedding
        # BN has a fixed unit scale (only its shift and statistics are learned).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_size)
        x = self.prelu(self.bn1(self.conv1(x)))
        use_ckpt = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for stage in self.stages:
            if use_ckpt:
                for block in stage:
                    x = checkpointed(block, x)
            else:
                x = stage(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        with fp32_region(x, self.fp32_head):
            x = self.features(self.fc(x.to(self.fc.weight.dtype)))
        return x


def iresnet(depth: int, **kw) -> IResNet:
    """An IResNet of a published depth (18, 34, 50, 100, 200); `kw` go to `IResNet`."""
    if depth not in IRESNET_LAYERS:
        raise ValueError(f"unknown iresnet depth {depth}; available: {sorted(IRESNET_LAYERS)}")
    return IResNet(IRESNET_LAYERS[depth], **kw)
