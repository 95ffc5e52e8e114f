"""Reading a checkpoint never runs code from its files.

`.metadata` (which DCP writes with plain pickle) is read with an unpickler that admits only DCP's
metadata types, and `rank<r>.pt` / pretrained weights go through `torch.load(weights_only=True)`
(the `.distcp` files are read the same way, in dcp_io). Anything else is refused with the file
named. `check_complete` runs the cheap checks that tell a truncated or damaged checkpoint before
any load.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from typing import Any

import torch

from fftrain.training.checkpoint.checks import RestrictedUnpickler, check_meta_against_dcp
from fftrain.training.checkpoint.layout import (DCP_METADATA_FILE, FC_WEIGHT, LABEL_MAP, META_FILE, CheckpointError,
                                                first_line, merge_extras, read_meta)

_DCP_METADATA_TYPES = {("torch.distributed.checkpoint.metadata", name) for name in (
    "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
    "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict")}
_DCP_DATA_FILE = re.compile(r"^[A-Za-z0-9_.-]+\.distcp$")


def _dtype(module: str, name: str):
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


def read_dcp_metadata(file: str):
    """DCP's Metadata from `file`, through the restricted unpickler, with its storage table checked."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    from recordio_tools.verification_bin import pickle_framing_problem

    try:
        with open(file, "rb") as f:
            data = f.read()
        problem = pickle_framing_problem(data)  # no length field may order memory from the unpickler
        if problem:
            raise pickle.UnpicklingError(f"truncated or malformed, {problem}")
        metadata = RestrictedUnpickler(io.BytesIO(data), _DCP_METADATA_TYPES, _dtype).load()  # torch 2.13
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


def load_plain_tensors(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code with UnpicklingError and others
        raise CheckpointError(f"{path}: refused, not plain tensors ({type(e).__name__}: "
                              f"{first_line(e)})") from None


def load_weights_file(path: str) -> dict[str, Any]:
    """A state_dict from a .pth/.pt file without executing code (weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except Exception as e:  # weights_only refuses pickled code with UnpicklingError and others
        raise CheckpointError(f"{path}: cannot be loaded as plain weights ({type(e).__name__}: {e})") from None


def check_complete(path: str) -> dict:
    """meta.json, the DCP metadata and every file it points into (long enough), state.json and the rank files
    (whole zip archives): the cheap checks that tell a truncated or damaged checkpoint before any load.
    Returns the meta."""
    meta = read_meta(path)
    metadata = read_dcp_metadata(os.path.join(path, DCP_METADATA_FILE))
    check_meta_against_dcp(meta, metadata, os.path.join(path, META_FILE), FC_WEIGHT, LABEL_MAP)
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        _check_size(os.path.join(path, name), size)
    merge_extras({}, path)
    for rank in range(meta["world_size"]):
        rank_file = os.path.join(path, f"rank{rank}.pt")
        if not zipfile.is_zipfile(rank_file):
            raise CheckpointError(f"{rank_file}: missing or truncated (not a whole torch archive)")
        load_plain_tensors(rank_file)
    return meta


def _check_size(file: str, needed: int) -> None:
    try:
        size = os.path.getsize(file)
    except OSError:
        raise CheckpointError(f"{file}: missing (the checkpoint metadata points into it)") from None
    if size < needed:
        raise CheckpointError(f"{file}: truncated ({size} of {needed} bytes)")

