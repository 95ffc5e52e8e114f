"""Checkpoints: a directory that is complete or absent, resharded on load by torch.distributed.checkpoint.

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

Loading never runs code from the files: `.metadata` (which DCP writes with plain pickle) is read
with an unpickler that admits only DCP's metadata types, every entry of the `.distcp` files must
be a tensor (read with `torch.load(weights_only=True)`; a non-tensor entry, which DCP would read
with `weights_only=False`, is refused), and `rank<r>.pt` / pretrained weights go through
`torch.load(weights_only=True)`. Anything else is refused with the file named.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from fftrain.data.label_space import LabelSpace, fused_dataset_of
from fftrain.distributed import DistContext, all_gather_object, barrier, broadcast_object
from fftrain.errors import UserError
from fftrain.training.faults import fault_point
from fftrain.training.run_log import get_logger

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
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


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


def _merge_extras(state: dict, path: str) -> None:
    """Put the JSON leaves of the checkpoint's replicated state back where they were (top-level keys
    of `state` only)."""
    state_path = os.path.join(path, STATE_FILE)
    try:
        with open(state_path, encoding="utf-8") as f:
            entries = json.load(f)["entries"]
    except FileNotFoundError:
        raise CheckpointError(f"{state_path}: missing") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{state_path}: not an fftrain state file ({type(e).__name__}: {e})") from None
    if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], list)
                                                and e[0] and all(isinstance(k, str) for k in e[0]) for e in entries):
        raise CheckpointError(f"{state_path}: not an fftrain state file (malformed entries)")
    for keys, value in entries:
        if keys[0] not in state:
            continue
        node = state
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = _from_json(value)


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


def read_meta(path: str) -> dict:
    meta_path = os.path.join(path, META_FILE)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a complete checkpoint ({META_FILE} missing)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: not valid JSON (a {type(meta).__name__}, not an object)")
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
    meta = check_complete(path)
    tensors, _ = split_tensors(replicated)
    state = _dcp_state(tensors, sharded, ctx)
    _safe_dcp_load(state, path, ctx.group)
    for key, rows in sharded.items():
        loaded = state["sharded"][key]
        rows.local.copy_(loaded.to_local() if hasattr(loaded, "to_local") else loaded)
    for key in replicated:
        replicated[key] = state[key]
    _merge_extras(replicated, path)
    rank_file = os.path.join(path, f"rank{ctx.rank}.pt")
    if meta["world_size"] != ctx.world_size or not os.path.exists(rank_file):
        return {}
    return _load_plain_tensors(rank_file)


def _load_plain_tensors(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code with UnpicklingError and others
        raise CheckpointError(f"{path}: refused, not plain tensors ({type(e).__name__}: "
                              f"{_first_line(e)})") from None


def resolve_resume(resume: str, root: str, ctx: DistContext) -> str | None:
    """'auto' -> newest complete checkpoint (or None); '' -> None; else the given path, which must exist.
    A newest checkpoint that is truncated or unreadable is skipped with a warning naming the file, for the
    previous one. Rank 0 decides and broadcasts so every rank resumes from the same one."""
    if not resume:
        return None
    decision = _try_decide_resume(resume, root) if ctx.is_main else None
    path, error = broadcast_object(decision, ctx.group)
    if error:
        raise CheckpointError(error)
    return path


def _try_decide_resume(resume: str, root: str) -> tuple[str | None, str | None]:
    try:
        return _decide_resume(resume, root), None
    except CheckpointError as e:
        return None, str(e)


def _decide_resume(resume: str, root: str) -> str | None:
    if resume != "auto":
        check_complete(resume)
        return resume
    found = complete_checkpoints(root)
    for _, path in reversed(found):
        try:
            check_complete(path)
            return path
        except CheckpointError as e:
            get_logger().warning(f"fftrain: warning: {e}; skipping {path} for the previous complete checkpoint")
    if found:
        raise CheckpointError(f"{root}: no readable checkpoint ({len(found)} found, each damaged; see the warnings)")
    return None


def check_complete(path: str) -> dict:
    """meta.json, the DCP metadata and every file it points into (long enough), state.json and the rank files
    (whole zip archives): the cheap checks that tell a truncated or damaged checkpoint before any load.
    Returns the meta."""
    meta = read_meta(path)
    metadata = read_dcp_metadata(os.path.join(path, DCP_METADATA_FILE))
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        _check_size(os.path.join(path, name), size)
    _merge_extras({}, path)
    for rank in range(meta["world_size"]):
        rank_file = os.path.join(path, f"rank{rank}.pt")
        if not zipfile.is_zipfile(rank_file):
            raise CheckpointError(f"{rank_file}: missing or truncated (not a whole torch archive)")
        _load_plain_tensors(rank_file)
    return meta


def _check_size(file: str, needed: int) -> None:
    try:
        size = os.path.getsize(file)
    except OSError:
        raise CheckpointError(f"{file}: missing (the checkpoint metadata points into it)") from None
    if size < needed:
        raise CheckpointError(f"{file}: truncated ({size} of {needed} bytes)")


# ---------------------------------------------------------------------------------------------
# DCP without unpickling: a restricted reader for `.metadata`, and tensors only in the `.distcp` files

_DCP_METADATA_TYPES = {("torch.distributed.checkpoint.metadata", name) for name in (
    "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
    "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict")}
_DCP_DATA_FILE = re.compile(r"^[A-Za-z0-9_.-]+\.distcp$")


class _MetadataUnpickler(pickle.Unpickler):
    """Admits only what DCP's FileSystemWriter pickles into `.metadata` (checked with torch 2.13)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_METADATA_TYPES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata type")


def read_dcp_metadata(file: str):
    """DCP's Metadata from `file`, through the restricted unpickler, with its storage table checked."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except Exception as e:  # the restricted unpickler's refusal, truncation (EOFError), garbage
        raise CheckpointError(f"{file}: refused, not checkpoint metadata ({type(e).__name__}: {e})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise CheckpointError(f"{file}: refused, not checkpoint metadata ({type(metadata).__name__})")
    for info in metadata.storage_data.values():
        if (not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str)
                or not _DCP_DATA_FILE.match(info.relative_path) or info.transform_descriptors):
            raise CheckpointError(f"{file}: refused, a storage entry is not a plain .distcp slice ({info!r:.200})")
    return metadata


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
                                          f"({type(e).__name__}: {_first_line(e)})") from None
            return super().read_data(LoadPlan([], plan.storage_data, plan.planner_data), planner)

    class TensorsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            raise CheckpointError(f"{read_item.dest_index.fqn}: refused, a non-tensor entry in the checkpoint's "
                                  ".distcp files (fftrain keeps non-tensor state in state.json)")

    return SafeReader, TensorsOnlyPlanner


def _safe_dcp_load(state: dict, path: str, group) -> None:
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
                              f"{_first_line(first)})") from None


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
    check_complete(path)
    tensors, _ = split_tensors(state)
    _safe_dcp_load(tensors, path, None)
    state.update(tensors)
    _merge_extras(state, path)
    return state


def load_backbone_from_checkpoint(path: str) -> torch.nn.Module:
    """The trained backbone (eval mode, CPU) rebuilt from the config recorded in the checkpoint."""
    from fftrain.config import config_from_dict
    from fftrain.model.embedding import EmbeddingModel

    meta = check_complete(path)
    cfg = config_from_dict(meta["config"])
    model = EmbeddingModel(cfg.model, cfg.grl, meta["num_datasets"])
    state = load_partial(path, {MODEL: model.state_dict()})
    model.load_state_dict(state[MODEL])
    return model.backbone.eval()


def load_proxies_from_checkpoint(path: str) -> torch.Tensor:
    """All class proxies [C_fused, D] of a checkpoint, gathered into one tensor."""
    meta = check_complete(path)
    weight = torch.empty(meta["num_classes_fused"], meta["embedding_size"])
    return load_partial(path, {"sharded": {FC_WEIGHT: weight}})["sharded"][FC_WEIGHT]


def model_and_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The replicated model and optimizer state in DCP's form (parameter names, not ids, as keys)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


def set_model_and_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                                  optim_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


@dataclass
class ProxiesAndLabels:
    """What the offline tools read from a checkpoint: every class proxy and the label space."""

    meta: dict
    proxies: torch.Tensor
    """[C_fused, D] as saved (not normalised)."""
    label_map: torch.Tensor
    """[C_src] int64 source class -> fused class."""
    fused_dataset: torch.Tensor
    """[C_fused] int64 dataset of each fused class (derived from the label map)."""


def load_proxies_and_labels(path: str) -> ProxiesAndLabels:
    """One process, no group: the proxies and label space of a complete checkpoint."""
    meta = check_complete(path)
    state = load_partial(path, {"sharded": {FC_WEIGHT: torch.empty(meta["num_classes_fused"], meta["embedding_size"])},
                                LABEL_MAP: torch.empty(meta["num_classes_source"], dtype=torch.int64)})
    class_dataset = [i for i, d in enumerate(meta["datasets"]) for _ in range(d["num_classes"])]
    label_map = state[LABEL_MAP]
    return ProxiesAndLabels(meta, state["sharded"][FC_WEIGHT], label_map,
                            torch.from_numpy(fused_dataset_of(class_dataset, label_map)))

