"""Saving and loading through torch.distributed.checkpoint (DCP): collective, resharded on load.

A save writes every rank's files into a temporary folder and renames it when all succeeded (see
layout); a load goes through a reader and planner that accept tensors only (safe_read).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import warnings
from contextlib import contextmanager

import torch

from fftrain.distributed import DistContext, all_gather_object, barrier, broadcast_object
from fftrain.training.checkpoint.layout import (FORMAT_VERSION, META_FILE, STATE_FILE, CheckpointError, ShardedRows,
                                                checkpoint_name, complete_checkpoints, first_line, latest_checkpoint,
                                                merge_extras, split_tensors)
from fftrain.training.checkpoint.safe_read import check_complete, load_plain_tensors, read_dcp_metadata
from fftrain.training.faults import fault_point


def _device_mesh(ctx: DistContext):
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(ctx.group, ctx.device.type)


def _as_dcp_tensor(rows: ShardedRows, mesh):
    """A DTensor sharded on dim 0 (DTensor's contiguous split, which fftrain.distributed.class_sharding uses)."""
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
    """Collective: every rank calls it with its own shards. Returns the final path.

    A failed write (a full disk included) removes the temporary folder on every rank and raises
    CheckpointError naming the cause and the last complete checkpoint, which is kept."""
    final = os.path.join(root, checkpoint_name(step))
    tmp = os.path.join(root, f".{checkpoint_name(step)}.tmp")
    if ctx.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(ctx.group)
    write_error = _try(_write_rank_files, tmp, ctx, replicated, sharded, rank_state)
    fault_point("fusion_save" if meta.get("reason") == "fusion" else "save", step, ctx.rank)
    errors = all_gather_object(write_error, ctx.group)
    if not any(errors) and ctx.is_main:
        errors = [_try(_finish, root, tmp, final, step, ctx.world_size, meta, keep_last)]
    errors = broadcast_object([e for e in errors if e], ctx.group)
    if errors:
        message = _save_failure_message(root, errors[0])
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(message)
    return final


def _try(fn, *args) -> str | None:
    """None, or the failure as one line (collective callers exchange it instead of raising)."""
    try:
        fn(*args)
        return None
    except Exception as e:  # noqa: BLE001 - reported to every rank, then raised as CheckpointError
        return _describe_failure(e)
    except BaseException as e:  # DCP's CheckpointException derives from BaseException
        if type(e).__name__ != "CheckpointException":
            raise
        if any(isinstance(exc, KeyboardInterrupt) for exc, _ in getattr(e, "failures", {}).values()):
            # DCP wrapped a Ctrl-C that landed in its save: the job is being interrupted, not failing
            raise KeyboardInterrupt from e
        return _describe_failure(e)


def _write_rank_files(tmp: str, ctx: DistContext, replicated: dict, sharded: dict[str, ShardedRows],
                      rank_state: dict) -> None:
    import torch.distributed.checkpoint as dcp

    tensors, extras = split_tensors(replicated)
    with _single_process_quiet():
        dcp.save(_dcp_state(tensors, sharded, ctx), checkpoint_id=tmp, process_group=ctx.group,
                 no_dist=ctx.group is None)
    torch.save(rank_state, os.path.join(tmp, f"rank{ctx.rank}.pt"))
    if ctx.is_main:
        _write_json_synced(os.path.join(tmp, STATE_FILE), {"entries": extras})


def _finish(root: str, tmp: str, final: str, step: int, world_size: int, meta: dict, keep_last: int) -> None:
    body = {"format_version": FORMAT_VERSION, "step": step, "world_size": world_size, **meta}
    _write_json_synced(os.path.join(tmp, META_FILE), body)
    if os.path.exists(final):
        _discard(final)
    os.replace(tmp, final)
    _prune(root, keep_last)


def _describe_failure(exc: BaseException) -> str:
    if _is_disk_full(exc):
        return "ENOSPC"
    return f"{type(exc).__name__}: {first_line(exc)}"


def _is_disk_full(exc: BaseException) -> bool:
    """torch.save reports a failed write as "unexpected pos" without the errno; DCP wraps errors per rank."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e):
            return True
        stack += [e.__cause__, e.__context__]
        stack += [pair[0] for pair in getattr(e, "failures", {}).values()]
    return False


def _save_failure_message(root: str, error: str) -> str:
    kept = latest_checkpoint(root)
    kept_note = f"the last complete checkpoint is kept: {kept}" if kept else "no earlier checkpoint exists"
    if error == "ENOSPC" or _free_bytes(root) < _MIN_FREE_BYTES:
        return f"no space left on {root}; {kept_note}"
    return f"{root}: saving a checkpoint failed ({error}); {kept_note}"


_MIN_FREE_BYTES = 1 << 20


def _free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return _MIN_FREE_BYTES


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
    from fftrain.training.read_lease import is_leased

    for _, path in complete_checkpoints(root)[:-keep_last]:
        if not is_leased(path):  # a command (fuse, eval, export, ...) is reading it: next time
            _discard(path)
    for name in os.listdir(root):
        if name.startswith(".step-") and name.endswith((".tmp", ".deleting")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def load_checkpoint(path: str, *, ctx: DistContext, replicated: dict, sharded: dict[str, ShardedRows]) -> dict:
    """Collective: fill `replicated` (state-dict templates) and each rank's `sharded` rows in place.

    Returns this rank's saved rank state when the world size matches, else {}.
    """
    meta = check_complete(path)
    tensors, templates = split_tensors(replicated)
    state = _dcp_state(tensors, sharded, ctx)
    safe_dcp_load(state, path, ctx.group)
    for key, rows in sharded.items():
        loaded = state["sharded"][key]
        rows.local.copy_(loaded.to_local() if hasattr(loaded, "to_local") else loaded)
    for key in replicated:
        replicated[key] = state[key]
    merge_extras(replicated, path, templates)
    rank_file = os.path.join(path, f"rank{ctx.rank}.pt")
    if meta["world_size"] != ctx.world_size or not os.path.exists(rank_file):
        return {}
    return load_plain_tensors(rank_file)


@functools.cache
def _safe_dcp_classes():
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.distributed.checkpoint.planner import LoadPlan

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = read_dcp_metadata(str(self._get_metadata_path(kwargs.get("rank"))))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan, planner):
            """One file at a time, so that a refusal (tensors are read with weights_only=True) names it."""
            per_file: dict[str, list] = {}
            for item in plan.items:
                per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
            for name, items in per_file.items():
                try:
                    super().read_data(LoadPlan(items, plan.storage_data, plan.planner_data), planner).wait()
                except CheckpointError:
                    raise
                except Exception as e:
                    raise CheckpointError(f"{os.path.join(str(self.path), name)}: refused, not plain tensors "
                                          f"({type(e).__name__}: {first_line(e)})") from None
            return super().read_data(LoadPlan([], plan.storage_data, plan.planner_data), planner)

    class TensorsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            raise CheckpointError(f"{read_item.dest_index.fqn}: refused, a non-tensor entry in the checkpoint's "
                                  ".distcp files (fftrain keeps non-tensor state in state.json)")

    return SafeReader, TensorsOnlyPlanner


def safe_dcp_load(state: dict, path: str, group) -> None:
    """dcp.load through the safe reader and planner; a refusal on any rank is raised as its CheckpointError."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader_cls, planner_cls = _safe_dcp_classes()
    try:
        with _single_process_quiet():
            dcp.load(state, storage_reader=reader_cls(path), planner=planner_cls(), process_group=group,
                     no_dist=group is None)
    except CheckpointException as e:
        for _, (exc, _) in sorted(e.failures.items()):
            if isinstance(exc, CheckpointError):
                raise CheckpointError(str(exc)) from None
        first = next(iter(e.failures.values()))[0]
        raise CheckpointError(f"{path}: cannot be loaded ({type(first).__name__}: "
                              f"{first_line(first)})") from None


def model_and_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The replicated model and optimizer state in DCP's form (parameter names, not ids, as keys)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


def set_model_and_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                                  optim_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
