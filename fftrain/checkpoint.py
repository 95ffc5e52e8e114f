"""Checkpoints: a directory that is complete or absent, resharded on load by torch.distributed.checkpoint.

Layout of `<run>/checkpoints/step-00001200/`:

- DCP files (`.metadata`, `*.distcp`): replicated state (backbone, GRL head, their optimizer,
  label map, class->dataset table) written once, and row-sharded state (the FC proxies and
  their momentum) written by each rank as its rows of one global tensor, so a run resumed on
  another number of ranks gets its new rows from whichever files hold them.
- `rank<r>.pt`: per-rank RNG state (restored only when the world size is unchanged).
- `meta.json`: step, phase, data position, class counts, world size, the config. Written last.

Every rank writes into `.step-00001200.tmp`; after a barrier rank 0 writes meta.json and renames
the folder, so a crash at any point leaves either the finished folder or a temporary one that
the next save or resume removes. Nothing is unpickled on load: DCP reads tensors, and
`rank<r>.pt` / pretrained weights go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .distributed import DistContext, barrier, broadcast_object
from .errors import UserError

META_FILE = "meta.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})$")


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, incomplete, or does not fit the current run."""


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


def _device_mesh(ctx: DistContext):
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(ctx.group, ctx.device.type)


def _as_dcp_tensor(rows: ShardedRows, mesh):
    """A DTensor sharded on dim 0 (DTensor's contiguous split, which fftrain.class_sharding uses)."""
    if mesh is None:
        return rows.local
    from torch.distributed.tensor import DTensor, Shard

    shape = (rows.global_rows, *rows.local.shape[1:])
    return DTensor.from_local(rows.local, mesh, [Shard(0)], run_check=False, shape=shape,
                              stride=torch.empty(shape, device="meta").stride())


def _dcp_state(replicated: dict, sharded: dict[str, ShardedRows], ctx: DistContext) -> dict:
    mesh = _device_mesh(ctx) if ctx.group is not None else None
    return {**replicated, "sharded": {k: _as_dcp_tensor(v, mesh) for k, v in sharded.items()}}


def save_checkpoint(root: str, step: int, *, ctx: DistContext, replicated: dict, sharded: dict[str, ShardedRows],
                    meta: dict, rank_state: dict, keep_last: int) -> str:
    """Collective: every rank calls it with its own shards. Returns the final path."""
    import torch.distributed.checkpoint as dcp

    final = os.path.join(root, checkpoint_name(step))
    tmp = os.path.join(root, f".{checkpoint_name(step)}.tmp")
    if ctx.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(ctx.group)
    with _single_process_quiet():
        dcp.save(_dcp_state(replicated, sharded, ctx), checkpoint_id=tmp, process_group=ctx.group,
                 no_dist=ctx.group is None)
    torch.save(rank_state, os.path.join(tmp, f"rank{ctx.rank}.pt"))
    barrier(ctx.group)
    if ctx.is_main:
        body = {"format_version": FORMAT_VERSION, "step": step, "world_size": ctx.world_size, **meta}
        _write_json_synced(os.path.join(tmp, META_FILE), body)
        if os.path.exists(final):
            _discard(final)
        os.replace(tmp, final)
        _prune(root, keep_last)
    barrier(ctx.group)
    return final


@contextmanager
def _single_process_quiet():
    """DCP warns on every single-process save/load, even when asked for one (no_dist=True)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _write_json_synced(path: str, body: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _discard(path: str) -> None:
    """Rename out of the `step-*` namespace first, so a kill mid-delete never leaves a
    half-deleted folder that still looks complete."""
    trash = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.deleting")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _prune(root: str, keep_last: int) -> None:
    for _, path in complete_checkpoints(root)[:-keep_last]:
        _discard(path)
    for name in os.listdir(root):
        if name.startswith(".step-") and name.endswith((".tmp", ".deleting")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def read_meta(path: str) -> dict:
    meta_path = os.path.join(path, META_FILE)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a complete checkpoint ({META_FILE} missing)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format version {meta.get('format_version')}, "
                              f"this fftrain reads {FORMAT_VERSION}")
    return meta


def check_compatible(meta: dict, expected: dict, path: str) -> None:
    """Refuse a checkpoint whose recorded shape-defining values differ from this run's."""
    for key, want in expected.items():
        got = meta.get(key)
        if got != want:
            raise CheckpointError(f"{path}: checkpoint has {key}={got!r} but this run has {key}={want!r}; "
                                  "use a checkpoint of the same configuration or start a new output_dir")


def load_checkpoint(path: str, *, ctx: DistContext, replicated: dict, sharded: dict[str, ShardedRows]) -> dict:
    """Collective: fill `replicated` (state-dict templates) and each rank's `sharded` rows in place.

    Returns this rank's saved rank state when the world size matches, else {}.
    """
    import torch.distributed.checkpoint as dcp

    meta = read_meta(path)
    state = _dcp_state(replicated, sharded, ctx)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=path, process_group=ctx.group, no_dist=ctx.group is None)
    for key, rows in sharded.items():
        loaded = state["sharded"][key]
        rows.local.copy_(loaded.to_local() if hasattr(loaded, "to_local") else loaded)
    for key in replicated:
        replicated[key] = state[key]
    rank_file = os.path.join(path, f"rank{ctx.rank}.pt")
    if meta["world_size"] != ctx.world_size or not os.path.exists(rank_file):
        return {}
    return torch.load(rank_file, map_location="cpu", weights_only=True)


def resolve_resume(resume: str, root: str, ctx: DistContext) -> str | None:
    """'auto' -> newest complete checkpoint (or None); '' -> None; else the given path, which must exist.
    Rank 0 decides and broadcasts so every rank resumes from the same one."""
    if not resume:
        return None
    path = latest_checkpoint(root) if resume == "auto" else resume
    path = broadcast_object(path, ctx.group)
    if path is not None:
        read_meta(path)
    return path


def load_weights_file(path: str) -> dict[str, Any]:
    """A state_dict from a .pth/.pt file without executing code (weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except Exception as e:  # weights_only refuses pickled code with UnpicklingError and others
        raise CheckpointError(f"{path}: cannot be loaded as plain weights ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# Reading pieces of a checkpoint in one process (eval, export, fuse)


def load_partial(path: str, state: dict) -> dict:
    """Fill the given subset of a checkpoint's state (templates of the right shapes) in one process."""
    import torch.distributed.checkpoint as dcp

    read_meta(path)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return state


def load_backbone_from_checkpoint(path: str) -> torch.nn.Module:
    """The trained backbone (eval mode, CPU) rebuilt from the config recorded in the checkpoint."""
    from .config import config_from_dict
    from .model import EmbeddingModel

    meta = read_meta(path)
    cfg = config_from_dict(meta["config"])
    model = EmbeddingModel(cfg.model, cfg.grl, meta["num_datasets"])
    state = load_partial(path, {"model": model.state_dict()})
    model.load_state_dict(state["model"])
    return model.backbone.eval()


def load_proxies_from_checkpoint(path: str) -> torch.Tensor:
    """All class proxies [C_fused, D] of a checkpoint, gathered into one tensor."""
    meta = read_meta(path)
    weight = torch.empty(meta["num_classes_fused"], meta["embedding_size"])
    return load_partial(path, {"sharded": {"fc_weight": weight}})["sharded"]["fc_weight"]
