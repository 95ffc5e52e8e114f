"""Loading published backbone weights (insightface `backbone.pth` and our own saves).

`torch.load(..., weights_only=True)`: a checkpoint is read as tensors and containers only, never
as code. Keys must match the model exactly; the error names what does not.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fftrain.errors import UserError

#: Container keys a state dict may be wrapped under (checked in this order, possibly nested);
#: "state_dict_backbone" is the backbone in arcface_torch's resume checkpoints (checkpoint_gpu_*.pt).
WRAPPER_KEYS = ("state_dict", "model", "backbone", "state_dict_backbone")
#: Prefixes stripped when every key carries them (DDP's wrapper, torch.compile's wrapper).
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
_LISTED = 8


class PretrainedError(UserError, ValueError):
    """A pretrained weights file that is missing, not a plain state dict, or does not fit the backbone."""


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat `{name: tensor}` state dict inside `obj`, unwrapped and prefix-stripped."""
    while isinstance(obj, Mapping) and not _is_flat(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise PretrainedError(f"{source}: no state dict found; top-level keys: {_names(list(obj))}; "
                             f"expected tensors or a dict under one of {list(WRAPPER_KEYS)}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise PretrainedError(f"{source}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    state = dict(obj)
    changed = True
    while changed and state:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _is_flat(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    return shown + (f", ... (+{len(keys) - _LISTED} more)" if len(keys) > _LISTED else "")


def state_dict_problems(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between `state` and `model.state_dict()` (empty if it loads).

    A missing `*.num_batches_tracked` is not a problem (a counter, absent from old checkpoints).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
    for k, v in state.items():
        if k in expected and v.shape != expected[k].shape:
            problems.append(f"shape mismatch for {k}: checkpoint {list(v.shape)} vs model "
                            f"{list(expected[k].shape)}")
    return problems


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights at `path` into `model` (strict) and return `model`.

    The file may hold a bare state dict or one wrapped under one of `WRAPPER_KEYS`;
    a "module." (DDP) or "_orig_mod." (torch.compile) prefix on every key is stripped.
    Raises PretrainedError naming the file and the missing/unexpected keys and shape mismatches.
    """
    source = str(path)
    if not Path(path).is_file():
        raise PretrainedError(f"{source}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PretrainedError(f"{source}: not a plain state dict; torch.load(weights_only=True) refused it "
                         f"(save model.state_dict(), not the model): {e}") from e
    state = extract_state_dict(obj, source)
    problems = state_dict_problems(model, state)
    if problems:
        raise PretrainedError(f"{source}: does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)  # strictness checked above (num_batches_tracked aside)
    return model
