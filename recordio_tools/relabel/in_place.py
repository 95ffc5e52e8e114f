"""Relabelling a training set in place, journaled (TRAINSET/relabel.journal.json) so that an
interruption at any instant leaves every shard wholly old or wholly new and a rerun finishes the job
(the crash-safety argument is in the package doc); datasets referenced from other folders are refused
or copied in first."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable

from ..files import fsync_dir, remove_quietly
from ..manifest import DATASET_FILE, MANIFEST_FILE, Manifest, load_manifest, manifests_referencing, \
    read_dataset_info, write_manifest
from ..scan import progress
from .helpers import (JOURNAL_FILE, JOURNAL_FORMAT, LABEL_MAP_COPY, _KillHook, _Lock, _manifest_file, _read_json_body,
                      _temp_of, _write_atomic, sha256_file)
from .label_maps import LabelMap, RelabelError, _map_copy_text
from .shards import _precheck, _Shard, _shards, _write_relabelled


class _Journal:
    def __init__(self, path: str, body: dict):
        self.path = path
        self.body = body

    @classmethod
    def load(cls, root: str) -> "_Journal | None":
        path = os.path.join(root, JOURNAL_FILE)
        if not os.path.exists(path):
            return None
        try:
            body = _read_json_body(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # never: it is replaced atomically
            raise RelabelError(f"{path}: relabel journal is not valid JSON ({e}); it was edited or damaged") from None
        if body.get("format") != JOURNAL_FORMAT or not isinstance(body.get("shards"), dict):
            raise RelabelError(f"{path}: not a relabel journal (format={body.get('format')!r})")
        return cls(path, body)

    @classmethod
    def start(cls, root: str, label_map: LabelMap) -> "_Journal":
        journal = cls(os.path.join(root, JOURNAL_FILE), {
            "format": JOURNAL_FORMAT, "version": 1, "label_map_sha256": label_map.sha256,
            "label_map_source": label_map.source, "num_classes_fused": label_map.num_fused,
            "state": "running", "shards": {}})
        journal.save()
        return journal

    @property
    def shards(self) -> dict:
        return self.body["shards"]

    def state_of(self, shard: _Shard) -> str | None:
        entry = self.shards.get(shard.rel)
        return entry["state"] if entry else None

    def save(self) -> None:
        _write_atomic(self.path, json.dumps(self.body, indent=1) + "\n")


@dataclass
class InPlaceResult:
    status: str  # "relabelled" or "already" (nothing to do)
    shards_rewritten: int
    shards_total: int
    outside: list[str]  # dataset folders outside the training-set folder whose shards were rewritten


def _resolve_pending(journal: _Journal, shards: list[_Shard]) -> None:
    """Decide every "pending" shard from its hash (see the crash-safety argument)."""
    changed = False
    for shard in shards:
        entry = journal.shards.get(shard.rel)
        if not entry or entry["state"] != "pending":
            continue
        digest = sha256_file(shard.rec)
        if digest == entry["new_sha256"]:
            entry["state"] = "done"
        elif digest == entry["old_sha256"]:
            del journal.shards[shard.rel]
        else:
            raise RelabelError(f"{shard.rec}: matches neither its contents before relabel nor after (journal "
                               f"{journal.path}); it was changed by something else: restore it from a backup")
        changed = True
    if changed:
        journal.save()


def _outside_folders(manifest: Manifest, shards: list[_Shard]) -> list[str]:
    root = os.path.realpath(manifest.root)
    folders = sorted({os.path.dirname(s.rec) for s in shards})
    return [f for f in folders if not (os.path.realpath(f) + os.sep).startswith(root + os.sep)]


def _finish(manifest_file: str, manifest: Manifest, shards: list[_Shard], label_map: LabelMap,
            journal: _Journal, kill: _KillHook) -> None:
    """Every shard done: the map copy, dataset.json marks, manifest.json, then the journal's "complete"."""
    _write_atomic(os.path.join(manifest.root, LABEL_MAP_COPY), _map_copy_text(label_map))
    for folder in sorted({os.path.dirname(s.rec) for s in shards}):
        path = os.path.join(folder, DATASET_FILE)
        if os.path.exists(path):
            body = _read_json_body(path)
            body.update({"labels": "fused", "label_map_sha256": label_map.sha256,
                         "num_classes_fused": label_map.num_fused})
            _write_atomic(path, json.dumps(body, indent=1) + "\n")
    body = _read_json_body(manifest_file)
    body.update({"labels": "fused", "num_classes_fused": label_map.num_fused,
                 "label_map_sha256": label_map.sha256, "label_map_file": LABEL_MAP_COPY})
    _write_atomic(manifest_file, json.dumps(body, indent=1) + "\n")
    kill("manifest")
    journal.body["state"] = "complete"
    journal.save()


def other_users(manifest: Manifest, folders: list[str]) -> list[str]:
    """Other manifest.json files (beside `folders` and beside the training set, one level down) whose
    shards lie in `folders` (the check every dataset-writing command's --out makes too)."""
    return manifests_referencing(folders, extra_bases=[os.path.dirname(os.path.realpath(manifest.root))],
                                 exclude=[os.path.join(manifest.root, MANIFEST_FILE)])


def _refuse_referenced(manifest_file: str, manifest: Manifest, outside: list[str]) -> None:
    users = other_users(manifest, outside)
    used_by = f"also used by {', '.join(users)}" if users else "no other training set found beside them"
    raise RelabelError(f"{manifest_file}: --in-place would rewrite shards this training set only references, in "
                       f"{', '.join(outside)} ({used_by}); use --out for a fused copy, or --copy-referenced to copy "
                       f"them into {manifest.root} first")


def copy_referenced(manifest_file: str, manifest: Manifest, outside: list[str], log: Callable[[str], None]) -> Manifest:
    """Copy the datasets held in `outside` folders into the training-set folder and point the manifest at
    the copies (each copy complete or absent; the manifest rewritten last)."""
    from ..trainset import copy_folder_name, copy_with_offset
    from ..files import atomic_directory

    wanted = {os.path.realpath(f) for f in outside}
    infos, folders = [], []
    for info in manifest.datasets:
        folder = os.path.dirname(os.path.join(manifest.root, info.shards[0].rec))
        local = read_dataset_info(folder)
        if os.path.realpath(folder) in wanted:
            target = os.path.join(manifest.root, copy_folder_name(info.name))
            if os.path.exists(target):
                raise RelabelError(f"{target}: exists; cannot copy dataset {info.name!r} from {folder} there")
            log(f"relabel: copying {folder} into {target} (it is referenced, not owned)")
            with atomic_directory(target) as tmp:
                local = copy_with_offset(folder, local, tmp, info.class_offset)
            folder = target
        infos.append(local)
        folders.append(folder)
    write_manifest(manifest.root, infos, folders)
    return load_manifest(manifest_file)


def relabel_in_place(trainset: str, label_map: LabelMap, log: Callable[[str], None] = print,
                     copy_referenced_shards: bool = False) -> InPlaceResult:
    """Write the fused labels into the training set's shards in place; resumes an interrupted run.

    Only shards inside the training-set folder are rewritten: datasets it references from elsewhere
    (which other training sets may use) are refused, or copied in first with `copy_referenced_shards`."""
    manifest_file = _manifest_file(trainset)
    manifest = load_manifest(manifest_file)
    shards = _shards(manifest)
    kill = _KillHook()
    with _Lock(manifest.root):
        body = _read_json_body(manifest_file)
        journal = _Journal.load(manifest.root)
        outside = _outside_folders(manifest, shards)
        if outside and journal is None and body.get("labels") != "fused":
            if not copy_referenced_shards:
                _refuse_referenced(manifest_file, manifest, outside)
            manifest = copy_referenced(manifest_file, manifest, outside, log)
            shards = _shards(manifest)
            body = _read_json_body(manifest_file)
        if journal is not None and journal.body.get("label_map_sha256") != label_map.sha256:
            if journal.body.get("state") == "running" and not journal.shards:
                journal = None  # stopped before touching any shard: start over with this map
            elif journal.body.get("state") == "complete":
                raise RelabelError(f"{journal.path}: labels were already fused in place with another label map "
                                   f"(sha256 {journal.body.get('label_map_sha256')}); they are no longer source "
                                   f"classes, so {label_map.source} does not apply")
            else:
                raise RelabelError(f"{journal.path}: an unfinished relabel with another label map (sha256 "
                                   f"{journal.body.get('label_map_sha256')}, from "
                                   f"{journal.body.get('label_map_source')}) is in progress; rerun with that map to "
                                   "finish it (done shards cannot be reverted)")
        if journal is None and body.get("labels") == "fused":
            if body.get("label_map_sha256") == label_map.sha256:
                return InPlaceResult("already", 0, len(shards), [])
            raise RelabelError(f"{manifest_file}: labels were already fused in place with another label map "
                               f"(sha256 {body.get('label_map_sha256')}); {label_map.source} does not apply")
        if journal is not None and journal.body.get("state") == "complete":
            return InPlaceResult("already", 0, len(shards), [])
        for shard in shards:
            remove_quietly(_temp_of(shard.rec))
        if journal is not None:
            _resolve_pending(journal, shards)
        todo = [s for s in shards if journal is None or journal.state_of(s) != "done"]
        for shard in progress(todo, total=len(todo), desc="check labels", unit="shard"):
            _precheck(shard, label_map)
        if journal is None:  # after the check: a bad record leaves no journal behind
            journal = _Journal.start(manifest.root, label_map)
        outside = _outside_folders(manifest, todo)
        for folder in outside:
            log(f"relabel: note: {folder} lies outside {manifest.root}; its shards are rewritten too")
        for shard in todo:
            tmp = _temp_of(shard.rec)
            try:
                old_sha, new_sha = _write_relabelled(shard, tmp, label_map, kill)
                shutil.copymode(shard.rec, tmp)
                journal.shards[shard.rel] = {"state": "pending", "old_sha256": old_sha, "new_sha256": new_sha}
                journal.save()
                kill("pending")
                os.replace(tmp, shard.rec)
                fsync_dir(os.path.dirname(shard.rec))
                kill("renamed")
            finally:
                remove_quietly(tmp)
            journal.shards[shard.rel]["state"] = "done"
            journal.save()
            kill("done")
        _finish(manifest_file, manifest, shards, label_map, journal, kill)
    return InPlaceResult("relabelled", len(todo), len(shards), outside)


def journal_state(trainset: str) -> str | None:
    """"running", "complete", or None when the training set has no relabel journal."""
    journal = _Journal.load(os.path.dirname(os.path.abspath(_manifest_file(trainset))))
    return journal.body.get("state") if journal else None
