"""Relabelling into a new training set (`relabel --out DIR`): one dataset of the fused classes with exact
two-float labels, the images copied unchanged (with their per-sample loss weights, when the set has any),
manifest.json + train.idx and the map applied."""

from __future__ import annotations

import json
import os
import re

from ..manifest import MANIFEST_FILE, Manifest, load_manifest, load_sample_weights, write_manifest
from ..recordio import RecordIOError, RecordReader, class_id_of, unpack
from .helpers import JOURNAL_FILE, OUT_LABEL_MAP, _manifest_file, _read_json_body
from .in_place import journal_state
from .label_maps import LabelMap, RelabelError, _map_copy_text
from .shards import _Bar, _Shard, _shards


def _copy_shard(shard: _Shard, writer, label_map: LabelMap) -> None:
    """Append the shard's records to `writer` (a DatasetWriter) with their fused labels."""
    lo, hi = shard.label_range
    with RecordReader(shard.rec, shard.idx, require_index=True) as reader, _Bar(shard) as bar:
        for key, payload in reader.items():
            try:
                header, image = unpack(payload)
                class_id = class_id_of(header)
            except ValueError as e:
                raise RecordIOError(shard.rec, f"key {key}", str(e)) from None
            if not lo <= class_id < hi:
                raise RecordIOError(shard.rec, f"key {key}",
                                    f"label {class_id} outside dataset {shard.dataset.name!r}'s classes [{lo}, {hi})")
            writer.add(int(label_map.mapping[class_id]), image)
            bar.update()


def relabel_copy(trainset: str, label_map: LabelMap, out: str, name: str = "fused",
                 num_shards: int | None = None) -> Manifest:
    """Write OUT: one dataset `name` with the fused labels, manifest.json + train.idx, label_map.json."""
    from ..files import atomic_directory
    from ..shards import DatasetWriter

    manifest_file = _manifest_file(trainset)
    manifest = load_manifest(manifest_file)
    body = _read_json_body(manifest_file)
    if body.get("labels") == "fused" or journal_state(manifest_file) == "running":
        raise RelabelError(f"{manifest_file}: labels were fused in place (or are being: see {JOURNAL_FILE}); "
                           "--out needs a training set holding source classes")
    out = os.path.abspath(out)
    inside = [p for p in manifest.rec_paths() + [manifest_file]
              if (os.path.realpath(p) + os.sep).startswith(os.path.realpath(out) + os.sep)]
    if inside:
        raise RelabelError(f"{out}: holds the input {inside[0]}; --out replaces the folder as a whole, give a new one")
    shards = _shards(manifest)
    num_shards = len(shards) if num_shards is None else num_shards
    if num_shards < 1:
        raise RelabelError(f"--shards must be >= 1, got {num_shards}")
    folder_name = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "fused"
    with atomic_directory(out, "relabel") as tmp:
        folder = os.path.join(tmp, folder_name)
        os.makedirs(folder)
        writer = DatasetWriter(folder, name, num_shards, class_offset=0)
        try:
            for shard in shards:
                _copy_shard(shard, writer, label_map)
            info = writer.finish(label_map.num_fused, sample_weights=load_sample_weights(manifest))
        except BaseException:
            writer.abort()
            raise
        write_manifest(tmp, [info], [folder])
        with open(os.path.join(tmp, OUT_LABEL_MAP), "w", encoding="utf-8") as f:
            f.write(_map_copy_text(label_map))
        out_manifest = os.path.join(tmp, MANIFEST_FILE)
        out_body = _read_json_body(out_manifest)
        out_body["relabel"] = {"source_manifest": os.path.abspath(manifest_file),
                               "source_datasets": [{"name": d.name, "num_classes": d.num_classes}
                                                   for d in manifest.datasets],
                               "label_map_sha256": label_map.sha256, "label_map_file": OUT_LABEL_MAP}
        with open(out_manifest, "w", encoding="utf-8") as f:
            f.write(json.dumps(out_body, indent=1) + "\n")
    return load_manifest(out)
