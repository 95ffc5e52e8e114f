"""Face-recognition backbones and their registry.

    model = build_backbone("iresnet50", embedding_size=512)       # [B,3,112,112] -> [B,512]
    load_pretrained(model, "ms1mv3_arcface_r50/backbone.pth")      # insightface weights

Names: iresnet18/34/50/100/200 and mobilefacenet(_large), key-compatible with insightface
arcface_torch (which calls them r18..r200, mbf, mbf_large; those names are accepted as aliases),
and iresnet_tiny, a narrow iresnet for the CPU demo. Inputs are RGB in [-1, 1]; outputs are not
normalised. Every backbone takes `embedding_size`, `dropout` and `grad_checkpoint`; other keyword
arguments go to the model class (e.g. `input_size` for iresnets, `fp32_head`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fftrain.model.backbones.iresnet import IResNet, iresnet
from fftrain.model.backbones.mobilefacenet import MobileFaceNet, mobilefacenet, mobilefacenet_large
from fftrain.model.backbones.pretrained import extract_state_dict, load_pretrained, state_dict_problems

__all__ = [
    "IResNet", "MobileFaceNet", "available_backbones", "build_backbone", "extract_state_dict", "is_backbone",
    "load_pretrained", "state_dict_problems",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "iresnet18": lambda **kw: iresnet(18, **kw),
    "iresnet34": lambda **kw: iresnet(34, **kw),
    "iresnet50": lambda **kw: iresnet(50, **kw),
    "iresnet100": lambda **kw: iresnet(100, **kw),
    "iresnet200": lambda **kw: iresnet(200, **kw),
    # CPU demo: stride-2 stem, one block per stage, 16..128 channels (fc 128*4*4 -> D).
    "iresnet_tiny": lambda **kw: IResNet((1, 1, 1, 1), widths=(16, 32, 64, 128), stem_stride=2, **kw),
    "mobilefacenet": mobilefacenet,
    "mobilefacenet_large": mobilefacenet_large,
}

#: insightface arcface_torch's config names.
_ALIASES = {
    "r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100",
    "r200": "iresnet200", "mbf": "mobilefacenet", "mbf_large": "mobilefacenet_large",
}


def available_backbones() -> list[str]:
    """Registered backbone names, sorted (aliases not included)."""
    return sorted(_REGISTRY)


def is_backbone(name: str) -> bool:
    """Whether `name` is a registered backbone or an insightface alias of one."""
    return _ALIASES.get(name, name) in _REGISTRY


def build_backbone(name: str, *, embedding_size: int = 512, dropout: float = 0.0,
                   grad_checkpoint: bool = False, **kw) -> nn.Module:
    """A freshly initialised backbone by registry name (or insightface alias, e.g. "r50")."""
    factory = _REGISTRY.get(_ALIASES.get(name, name))
    if factory is None:
        raise ValueError(f"unknown backbone {name!r}; available: {available_backbones()}")
    return factory(embedding_size=embedding_size, dropout=dropout, grad_checkpoint=grad_checkpoint, **kw)
