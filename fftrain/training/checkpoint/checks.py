"""What a checkpoint's files may claim, checked before anything is allocated or loaded from them.

- `meta.json`: every field of the right type (`check_meta_fields`) and, for the fields the offline readers
  size tensors from, present (`require_fields`); class counts and the embedding size agree with the tensor
  sizes DCP's `.metadata` records, and those with the bytes stored for them (`check_meta_against_dcp`), so a
  meta claiming 10^12 classes is refused, not allocated.
- `state.json`: each value has the kind of the value it replaces (`check_state_value`): a string where the
  optimizer keeps a number is refused naming the key.
- `.metadata`: `RestrictedUnpickler` admits only the given types, and builds only instances of them with
  their own fields: a pickle that sets an attribute on a class (e.g. replaces `Metadata.__setstate__`) or a
  field the class does not declare is refused, so one crafted file cannot change how a good one loads.

This module imports nothing of torch.distributed: the classes reach it through the unpickler.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any, Callable

from fftrain.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, incomplete, or does not fit the current run (or whose files claim what
    they cannot hold); the message names the file and the field."""


# ---- meta.json -----------------------------------------------------------------------------------

_INT_FIELDS = {"step": 0, "world_size": 1, "num_classes_fused": 1, "num_classes_source": 1, "embedding_size": 1,
               "num_datasets": 1, "sample_step": 0, "num_records": 0}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_meta_fields(meta: dict, meta_path: str) -> dict:
    """The types and relations of meta.json's fields (those present; `world_size` and `step` always)."""
    for key in ("world_size", "step"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: field {key!r} missing")
    for key, lower in _INT_FIELDS.items():
        if key in meta and (not _is_int(meta[key]) or meta[key] < lower):
            raise CheckpointError(f"{meta_path}: field {key!r} must be an integer >= {lower}, got "
                                       f"{meta[key]!r}"[:300])
    if "fused" in meta and not isinstance(meta["fused"], bool):
        raise CheckpointError(f"{meta_path}: field 'fused' must be true or false, got {meta['fused']!r}"[:300])
    if "config" in meta and not isinstance(meta["config"], dict):
        raise CheckpointError(f"{meta_path}: field 'config' must be an object")
    if "datasets" in meta:
        datasets = meta["datasets"]
        if not isinstance(datasets, list) or not all(
                isinstance(d, dict) and isinstance(d.get("name"), str) and _is_int(d.get("num_classes"))
                and d["num_classes"] >= 0 for d in datasets):
            raise CheckpointError(f"{meta_path}: field 'datasets' must be a list of {{name, num_classes >= 0}}")
        if "num_classes_source" in meta and sum(d["num_classes"] for d in datasets) != meta["num_classes_source"]:
            raise CheckpointError(f"{meta_path}: the datasets' class counts do not add up to "
                                       f"num_classes_source {meta['num_classes_source']}")
        if "num_datasets" in meta and len(datasets) != meta["num_datasets"]:
            raise CheckpointError(f"{meta_path}: {len(datasets)} datasets but num_datasets "
                                       f"{meta['num_datasets']}")
    if meta.get("num_classes_fused", 0) > meta.get("num_classes_source", math.inf):
        raise CheckpointError(f"{meta_path}: num_classes_fused {meta['num_classes_fused']} exceeds "
                                   f"num_classes_source {meta['num_classes_source']}")
    return meta


def require_fields(meta: dict, keys: tuple[str, ...], meta_path: str) -> None:
    """The fields a reader needs (their types already checked)."""
    missing = [key for key in keys if key not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: field {missing[0]!r} missing (this reader needs "
                                   f"{', '.join(keys)})")


def _stored_tensor(metadata, fqn: str):
    """DCP's TensorStorageMetadata of `fqn` (or None) and the bytes stored for its chunks."""
    entry = metadata.state_dict_metadata.get(fqn)
    if entry is None or not hasattr(entry, "chunks"):
        return None, 0
    stored = sum(info.length for index, info in metadata.storage_data.items() if getattr(index, "fqn", None) == fqn)
    return entry, stored


def check_meta_against_dcp(meta: dict, metadata, meta_path: str, fc_key: str, label_map_key: str) -> None:
    """Every tensor DCP records is no larger than the bytes stored for it, and the meta's class counts
    and embedding size are the sizes of the FC weight and the label map it records."""
    for fqn, entry in metadata.state_dict_metadata.items():
        if not hasattr(entry, "chunks"):
            continue
        size = list(entry.size)
        itemsize = entry.properties.dtype.itemsize if hasattr(entry.properties.dtype, "itemsize") else 8
        needed = math.prod(size) * itemsize
        _, stored = _stored_tensor(metadata, fqn)
        if needed > stored:
            raise CheckpointError(f"{meta_path}: the checkpoint metadata claims {fqn} of shape {size} "
                                       f"({needed} bytes) but stores {stored} bytes for it")
    fc, _ = _stored_tensor(metadata, f"sharded.{fc_key}")
    if fc is not None and "num_classes_fused" in meta and "embedding_size" in meta:
        if list(fc.size) != [meta["num_classes_fused"], meta["embedding_size"]]:
            raise CheckpointError(f"{meta_path}: num_classes_fused={meta['num_classes_fused']} and "
                                  f"embedding_size={meta['embedding_size']} do not match the stored FC weight "
                                  f"{list(fc.size)}")
    label_map, _ = _stored_tensor(metadata, label_map_key)
    if label_map is not None and "num_classes_source" in meta and list(label_map.size) != [meta["num_classes_source"]]:
        raise CheckpointError(f"{meta_path}: num_classes_source {meta['num_classes_source']} does not match "
                                   f"the stored label map {list(label_map.size)}")


# ---- state.json ----------------------------------------------------------------------------------

def _kind(value) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def check_state_value(template: Any, value: Any, where: str, state_path: str) -> None:
    """`value` (from state.json) has the kind of `template` (what the run holds there), recursively where
    both have the same shape; a None template takes anything (an optional setting)."""
    if template is None:
        return
    if _kind(template) != _kind(value):
        raise CheckpointError(f"{state_path}: {where} must be {_kind(template)}, got {value!r}"[:300])
    if isinstance(value, float) and not math.isfinite(value):
        raise CheckpointError(f"{state_path}: {where} must be a finite number, got {value!r}")
    if isinstance(template, dict):
        for key in template.keys() & value.keys():
            check_state_value(template[key], value[key], f"{where}.{key}", state_path)
    elif isinstance(template, (list, tuple)) and len(template) == len(value):
        for i, (t, v) in enumerate(zip(template, value)):
            check_state_value(t, v, f"{where}[{i}]", state_path)


# ---- the restricted unpickler --------------------------------------------------------------------

class RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD can be checked
    """Loads only `allowed` (module, name) globals (and what `extra(module, name)` returns, if anything),
    and BUILDs only instances of classes it loaded, setting only their declared dataclass fields; a class
    with its own `__setstate__` gets its state through it (its own code, which no pickle can replace here)."""

    def __init__(self, file, allowed: set[tuple[str, str]], extra: Callable[[str, str], Any] | None = None):
        super().__init__(file)
        self._allowed = allowed
        self._extra = extra
        self._classes: set[type] = set()

    def find_class(self, module: str, name: str):
        if (module, name) in self._allowed:
            found = super().find_class(module, name)
        else:
            found = self._extra(module, name) if self._extra else None
            if found is None:
                raise pickle.UnpicklingError(f"{module}.{name} is not a type of this file format")
        if isinstance(found, type):
            self._classes.add(found)
        return found

    def _checked_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, type):
            raise pickle.UnpicklingError(f"refused: the file sets attributes of the class {inst.__name__}")
        cls = type(inst)
        if cls not in self._classes:
            raise pickle.UnpicklingError(f"refused: the file sets attributes of a {cls.__name__}")
        if not callable(getattr(cls, "__setstate__", None)):
            fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
            dict_state, slot_state = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
            for part in (dict_state, slot_state):
                if part is None:
                    continue
                if not isinstance(part, dict) or not set(part) <= fields:
                    extra = sorted(map(str, set(part) - fields)) if isinstance(part, dict) else [type(part).__name__]
                    raise pickle.UnpicklingError(f"refused: the file sets {', '.join(extra)[:200]} on a "
                                                 f"{cls.__name__}, not one of its fields")
        pickle._Unpickler.load_build(self)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _checked_build
