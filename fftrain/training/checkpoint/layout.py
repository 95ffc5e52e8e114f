"""What a checkpoint folder holds and how it is named: the layout, meta.json, and state.json (the
non-tensor leaves of the replicated state).

Layout of `<run>/checkpoints/step-00001200/`:

- DCP files (`.metadata`, `*.distcp`): replicated state (backbone, GRL head, their optimizer,
  the label map) written once, and row-sharded state (the FC proxies and
  their momentum) written by each rank as its rows of one global tensor, so a run resumed on
  another number of ranks gets its new rows from whichever files hold them.
- `state.json`: the non-tensor leaves of the replicated state (optimizer hyper-parameters, ...),
  so that the DCP files hold tensors only.
- `rank<r>.pt`: per-rank RNG state (restored only when the world size is unchanged).
- `meta.json`: step, phase, data position, class counts, world size, the config. Written last.

Every rank writes into `.step-00001200.tmp`; after a barrier rank 0 writes meta.json and renames
the folder, so a crash at any point leaves either the finished folder or a temporary one that
the next save or resume removes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from fftrain.data.label_space import LabelSpace
from fftrain.training.checkpoint.checks import CheckpointError, check_meta_fields, check_state_value
from recordio_tools.strict_json import read_json

META_FILE = "meta.json"
STATE_FILE = "state.json"
DCP_METADATA_FILE = ".metadata"
FORMAT_VERSION = 2
MODEL = "model"  # the replicated state: the backbone and the dataset classifier
OPTIMIZER = "optim"
FC_WEIGHT = "fc_weight"
FC_MOMENTUM = "fc_momentum"
LABEL_MAP = LabelSpace.CHECKPOINT_KEY
_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class ShardedRows:
    """This rank's contiguous rows [start, start + len(local)) of a [global_rows, ...] tensor."""

    local: torch.Tensor
    global_rows: int


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _NAME.match(name)
        if match and os.path.exists(os.path.join(root, name, META_FILE)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(root: str) -> str | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


def read_meta(path: str) -> dict:
    """meta.json read strictly (duplicate keys, NaN, deep nesting refused), every field of the right type."""
    meta_path = os.path.join(path, META_FILE)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{path}: a file, not a checkpoint folder")
    if not os.path.isfile(meta_path):
        raise CheckpointError(f"{path}: not a complete checkpoint ({META_FILE} missing)")
    meta = read_json(meta_path, CheckpointError)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: not valid JSON (a {type(meta).__name__}, not an object)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format version {meta.get('format_version')!r:.40}, "
                              f"this fftrain reads {FORMAT_VERSION}")
    return check_meta_fields(meta, meta_path)


def check_compatible(meta: dict, expected: dict, path: str) -> None:
    """Refuse a checkpoint whose recorded shape-defining values differ from this run's."""
    for key, want in expected.items():
        got = meta.get(key)
        if got != want:
            raise CheckpointError(f"{path}: checkpoint has {key}={got!r} but this run has {key}={want!r}; "
                                  "use a checkpoint of the same configuration or start a new output_dir")



# ---------------------------------------------------------------------------------------------
# Non-tensor state: JSON beside the tensors, so the DCP files hold tensors only


def split_tensors(state: dict, prefix: tuple = ()) -> tuple[dict, list]:
    """(the nested dicts with only their tensor leaves, [[key path, JSON value], ...] for the rest)."""
    tensors, extras = {}, []
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"checkpoint state key {prefix + (key,)} is not a string")
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, dict) and value:
            tensors[key], nested = split_tensors(value, prefix + (key,))
            extras += nested
        else:
            extras.append([list(prefix + (key,)), _to_json(value, prefix + (key,))])
    return tensors, extras


def _to_json(value, where: tuple):
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v, where) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[k, _to_json(v, where)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint state {'.'.join(map(str, where))}: {type(value).__name__} is neither a tensor "
                    "nor plain data")


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict) and set(value) == {"__tuple__"}:
        return tuple(_from_json(v) for v in value["__tuple__"])
    if isinstance(value, dict) and set(value) == {"__dict__"}:
        return {k: _from_json(v) for k, v in value["__dict__"]}
    return value


def merge_extras(state: dict, path: str, templates: list | None = None) -> None:
    """Put the JSON leaves of the checkpoint's replicated state back where they were (top-level keys
    of `state` only). `templates`: the run's own leaves (`split_tensors`' second result); a loaded value
    must be of the same kind as the one it replaces."""
    expected = {tuple(keys): value for keys, value in templates or []}
    state_path = os.path.join(path, STATE_FILE)
    body = read_json(state_path, CheckpointError, "state file")
    entries = body.get("entries") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], list)
                                                and e[0] and all(isinstance(k, str) for k in e[0]) for e in entries):
        raise CheckpointError(f"{state_path}: not an fftrain state file (malformed entries)")
    for keys, value in entries:
        if keys[0] not in state:
            continue
        node = state
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{state_path}: entry {'.'.join(keys)[:200]} goes through a value that is "
                                      "not an object")
        try:
            loaded = _from_json(value)
        except (ValueError, TypeError):
            raise CheckpointError(f"{state_path}: entry {'.'.join(keys)[:200]} is malformed") from None
        check_state_value(_from_json(expected.get(tuple(keys))), loaded, ".".join(keys), state_path)
        node[keys[-1]] = loaded

