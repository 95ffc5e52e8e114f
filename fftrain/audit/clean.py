"""`fftrain audit --write-clean OUT`: a cleaned copy of the training set.

- outlier images (cosine to their class centre below the intra-class threshold) are dropped;
- duplicate classes are merged: the components the audit found (the fusion step's union-find,
  `fftrain.fusion.components.build_plan`, with its max-component guard) become one class each;
  `merge="within"` (default) merges only classes of one dataset, leaving cross-dataset duplicates
  to FaceFusion, whose job they are; `merge="all"` also merges across datasets, a merged class
  then belonging to the dataset of its smallest source class (the fusion step's rule);
- leaked identities (training classes nearest to a leaked verification image) are removed, with
  every class merged with them.

OUT keeps the datasets, in order, each with as many shards as before and its classes renumbered
0..K-1 in the order of their smallest source class; manifest.json + train.idx make it a training
set, and manifest.json's "audit_clean" entry records what was done; clean_map.json maps every
source class to its new class (-1: removed). OUT is built under a temporary name and replaces OUT
as a whole at the end; an OUT that exists and was not written by this command is refused.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from fftrain.audit.inputs import AuditError

CLEAN_MAP_FILE = "clean_map.json"


def clean_label_space(class_dataset: np.ndarray, components: list[list[int]], removed) -> tuple[np.ndarray, np.ndarray]:
    """(new dataset, new local label) of every source class; -1 where the class is removed.

    components: groups of source classes to merge; removed: source classes to remove (with their group)."""
    num = class_dataset.shape[0]
    root = np.arange(num, dtype=np.int64)
    for members in components:
        root[np.asarray(members, dtype=np.int64)] = min(members)
    removed_roots = np.unique(root[np.asarray(sorted(removed), dtype=np.int64)])
    keep = ~np.isin(root, removed_roots)
    new_dataset = np.where(keep, class_dataset[root], -1)
    new_local = np.full(num, -1, dtype=np.int64)
    for d in np.unique(class_dataset):
        roots = np.unique(root[keep & (new_dataset == d)])
        mine = keep & (new_dataset == d)
        new_local[mine] = np.searchsorted(roots, root[mine])
    return new_dataset, new_local


def _check_out(out: str, manifest) -> None:
    out = os.path.abspath(out)
    if os.path.exists(out):
        body = {}
        try:
            with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
                body = json.load(f)
        except (OSError, ValueError):
            pass
        if "audit_clean" not in body:
            raise AuditError(f"{out}: exists and is not a cleaned set written by fftrain audit; give a new folder")
    inside = [p for p in manifest.rec_paths() if (os.path.realpath(p) + os.sep).startswith(os.path.realpath(out) + os.sep)]
    if inside:
        raise AuditError(f"{out}: holds the input shard {inside[0]}; --write-clean replaces the folder, give a new one")


def check_clean_target(out: str, manifest) -> None:
    """Refuse OUT before the (long) embedding pass when it cannot be written."""
    _check_out(out, manifest)


def write_clean_set(out: str, manifest, records, *, drop_keys: np.ndarray, components: list[list[int]],
                    removed_classes, record: dict, progress: bool = True) -> dict:
    """Write the cleaned set; returns the summary also stored as manifest.json's "audit_clean"."""
    from tqdm import tqdm

    from recordio_tools.manifest import write_manifest
    from recordio_tools.files import atomic_directory
    from recordio_tools.shards import DatasetWriter

    _check_out(out, manifest)
    class_dataset = manifest.class_dataset()
    new_dataset, new_local = clean_label_space(class_dataset, components, removed_classes)
    counts = [int(new_local[new_dataset == d].max(initial=-1)) + 1 for d in range(len(manifest.datasets))]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    drop = np.zeros(len(records), bool)
    drop[np.asarray(drop_keys, dtype=np.int64)] = True
    kept = dropped_removed = 0
    with atomic_directory(out) as tmp:
        folders, writers = [], []
        for d, info in enumerate(manifest.datasets):
            folder = os.path.join(tmp, re.sub(r"[^A-Za-z0-9._-]", "_", info.name))
            os.makedirs(folder)
            folders.append(folder)
            writers.append(DatasetWriter(folder, info.name, len(info.shards), offsets[d]))
        try:
            for key in tqdm(range(len(records)), unit="img", desc="clean", leave=False, disable=not progress):
                if drop[key]:
                    continue
                jpeg, source = records.read(key)
                if new_local[source] < 0:
                    dropped_removed += 1
                    continue
                writers[new_dataset[source]].add(int(new_local[source]), jpeg.tobytes())
                kept += 1
            infos = [w.finish(counts[d]) for d, w in enumerate(writers)]
        except BaseException:
            for w in writers:
                w.abort()
            raise
        write_manifest(tmp, infos, folders)
        summary = dict(record, images_in=len(records), images_out=kept, outliers_dropped=int(drop.sum()),
                       images_of_removed_classes=dropped_removed, classes_in=int(class_dataset.size),
                       classes_out=int(sum(counts)), merged_components=[sorted(map(int, c)) for c in components],
                       removed_classes=sorted(int(c) for c in removed_classes),
                       source_manifest=os.path.join(manifest.root, "manifest.json"), clean_map_file=CLEAN_MAP_FILE)
        path = os.path.join(tmp, "manifest.json")
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
        body["audit_clean"] = summary
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(body, indent=1) + "\n")
        clean_class = np.where(new_local >= 0, np.asarray(offsets)[np.maximum(new_dataset, 0)] + new_local, -1)
        with open(os.path.join(tmp, CLEAN_MAP_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": "fftrain-audit-clean-map", "version": 1,
                       "datasets": [{"name": i.name, "num_classes": i.num_classes} for i in manifest.datasets],
                       "num_classes_clean": int(sum(counts)), "clean_class": clean_class.tolist()}, f)
            f.write("\n")
    return summary
