"""Label maps (source class -> fused class): reading `fftrain fuse`'s label_map.json or deriving the ideal
map from an overlaps.json ground truth, each checked against one training set's manifest; a map's
SHA-256 identity; `RelabelError`, the error of the whole relabel package."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..manifest import MANIFEST_FILE, Manifest
from ..strict_json import read_json

LABEL_MAP_FORMAT = "fftrain-label-map"


class RelabelError(UserError, ValueError):
    """A label map that does not fit the training set, or a relabel that cannot go on; names the file."""


@dataclass
class LabelMap:
    """Source class -> fused class, checked against one training set."""

    mapping: np.ndarray  # int64 [num_classes_source]
    num_fused: int
    sha256: str
    source: str  # the file it came from
    body: dict = field(default_factory=dict)  # what is written as the copy of the map

    @property
    def num_source(self) -> int:
        return len(self.mapping)


def label_map_sha256(mapping: np.ndarray) -> str:
    """The map's identity: SHA-256 of its entries as little-endian int64s."""
    return hashlib.sha256(np.ascontiguousarray(mapping, dtype="<i8").tobytes()).hexdigest()


def _check_mapping(values, path: str, manifest: Manifest, num_fused_given) -> tuple[np.ndarray, int]:
    manifest_file = os.path.join(manifest.root, MANIFEST_FILE)
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise RelabelError(f"{path}: \"label_map\" must be a list of integers (fused class of each source class)")
    if len(values) != manifest.num_classes:
        raise RelabelError(f"{path}: label map has {len(values)} entries but {manifest_file} has "
                           f"{manifest.num_classes} source classes (one entry per source class)")
    negative = next((i for i, v in enumerate(values) if v < 0), None)
    if negative is not None:
        raise RelabelError(f"{path}: source class {negative} maps to negative id {values[negative]}")
    past = next((i for i, v in enumerate(values) if v > len(values)), None)
    if past is not None:  # before any array is sized by it: such an id leaves fused ids unused
        raise RelabelError(f"{path}: fused ids are not contiguous: source class {past} maps to id "
                           f"{values[past]}, past the {len(values)} source classes"[:300])
    mapping = np.asarray(values, dtype=np.int64)
    num_fused = int(mapping.max()) + 1 if mapping.size else 0
    present = np.zeros(num_fused, dtype=bool)
    present[mapping] = True
    if not present.all():
        missing = np.flatnonzero(~present)
        raise RelabelError(f"{path}: fused ids are not contiguous 0..{num_fused - 1}: {len(missing)} unused, "
                           f"first {int(missing[0])} (ids must be 0..K-1 with every id used)")
    if num_fused_given is not None and num_fused_given != num_fused:
        raise RelabelError(f"{path}: num_classes_fused is {num_fused_given} but the map uses ids 0..{num_fused - 1}")
    return mapping, num_fused


def read_label_map(path: str, manifest: Manifest) -> LabelMap:
    """Read label_map.json (from `fftrain fuse`) and check it against `manifest`."""
    body = read_json(path, RelabelError, "label map (written by `fftrain fuse`)")
    if not isinstance(body, dict) or body.get("format") != LABEL_MAP_FORMAT:
        found = body.get("format") if isinstance(body, dict) else type(body).__name__
        raise RelabelError(f"{path}: not an fftrain label map (format={found!r}, expected {LABEL_MAP_FORMAT!r})")
    datasets = body.get("datasets")
    if not isinstance(datasets, list) or not all(isinstance(d, dict) and "name" in d and "num_classes" in d
                                                 for d in datasets):
        raise RelabelError(f"{path}: missing or malformed \"datasets\" (a list of {{name, num_classes}})")
    theirs = [(d["name"], d["num_classes"]) for d in datasets]
    ours = [(d.name, d.num_classes) for d in manifest.datasets]
    if theirs != ours:
        raise RelabelError(f"{path}: datasets {_describe(theirs)} do not match "
                           f"{os.path.join(manifest.root, MANIFEST_FILE)}: {_describe(ours)}")
    given = body.get("num_classes_fused")
    if given is not None and (not isinstance(given, int) or isinstance(given, bool)):
        raise RelabelError(f"{path}: num_classes_fused must be an integer, got {given!r}")
    mapping, num_fused = _check_mapping(body.get("label_map"), path, manifest, given)
    return LabelMap(mapping, num_fused, label_map_sha256(mapping), os.path.abspath(path), body)


def label_map_from_overlaps(path: str, manifest: Manifest) -> LabelMap:
    """The ideal map from an overlaps.json ground truth (synth / split-overlap), checked against `manifest`."""
    from ..overlaps import OVERLAPS_FILE, OverlapsError, read_overlaps

    if os.path.isdir(path):
        path = os.path.join(path, OVERLAPS_FILE)
    try:
        overlaps = read_overlaps(path)
    except OverlapsError as e:
        raise RelabelError(str(e)) from None
    theirs = [(d["name"], d["num_classes"], d["class_offset"]) for d in overlaps.datasets]
    ours = [(d.name, d.num_classes, d.class_offset) for d in manifest.datasets]
    if theirs != ours:
        raise RelabelError(f"{path}: datasets (name, classes, offset) {theirs} do not match "
                           f"{os.path.join(manifest.root, MANIFEST_FILE)}: {ours}")
    mapping, num_fused = _check_mapping(overlaps.label_map(), path, manifest, None)
    body = {"format": LABEL_MAP_FORMAT, "from_overlaps": os.path.abspath(path),
            "datasets": [{"name": d.name, "num_classes": d.num_classes} for d in manifest.datasets],
            "num_classes_fused": num_fused, "label_map": mapping.tolist()}
    return LabelMap(mapping, num_fused, label_map_sha256(mapping), os.path.abspath(path), body)


def _describe(pairs: list) -> str:
    shown = ", ".join(f"{n} ({c})" for n, c in pairs[:8])
    return "[" + shown + (", ..." if len(pairs) > 8 else "") + "]"


def _map_copy_text(label_map: LabelMap) -> str:
    body = {**label_map.body, "label_map_sha256": label_map.sha256, "applied_from": label_map.source}
    return json.dumps(body) + "\n"
