"""`recordio_tools relabel`: fused labels in place (only label bytes change, journaled, crash-safe) or as a copy.

The crash tests SIGKILL a relabel subprocess at fixed points (through the test-only hook
FFTRAIN_RELABEL_TEST_KILL) and at random moments, then check that every shard is wholly old or
wholly new, and that a rerun finishes the job.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_helpers import folder_snapshot, jpeg_bytes, run_cli, sha1
from recordio_tools import relabel as relabel_mod
from recordio_tools.relabel import shards as relabel_shards
from recordio_tools.manifest import DatasetInfo, Shard, load_manifest, write_dataset_info, write_manifest
from recordio_tools.overlaps import read_overlaps
from recordio_tools.recordio import (IRHeader, RecordIOError, RecordReader, RecordWriter, class_id_of, pack,
                                     unpack)
from recordio_tools.synthetic import generate_synthetic_set
from repo_paths import REPO



# ---------------------------------------------------------------------------------------------
# Fixtures: one tiny synthetic set (4 shards per dataset), its ideal map, and one finished relabel


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _records(rec):
    """(key, header, image SHA-1) of every record of a shard, in index order."""
    with RecordReader(str(rec)) as reader:
        return [(key, *(lambda h, img: (h, sha1(img)))(*unpack(payload))) for key, payload in reader.items()]


class Pristine:
    def __init__(self, root):
        self.root = root
        self.manifest = load_manifest(str(root))
        self.rec_paths = [os.path.relpath(p, root) for p in self.manifest.rec_paths()]
        self.old_sha = {p: _sha256(root / p) for p in self.rec_paths}
        self.label_map = np.array(read_overlaps(str(root / "overlaps.json")).label_map())
        self.new_sha: dict[str, str] = {}

    def copy(self, dst):
        shutil.copytree(self.root, dst)
        return dst

    def shard_states(self, folder) -> list[str]:
        """'old' / 'new' per shard (both when the map leaves it unchanged); fails on anything else."""
        states = []
        for p in self.rec_paths:
            digest = _sha256(folder / p)
            assert digest in (self.old_sha[p], self.new_sha[p]), f"{p} is neither wholly old nor wholly new"
            states.append("new" if digest == self.new_sha[p] else "old")
        return states

    def assert_finished(self, folder):
        assert self.shard_states(folder) == ["new"] * len(self.rec_paths)
        journal = json.loads((folder / relabel_mod.JOURNAL_FILE).read_text())
        assert journal["state"] == "complete"
        assert json.loads((folder / "manifest.json").read_text())["labels"] == "fused"
        assert not [p for p in folder.rglob("*") if relabel_mod.TMP_SUFFIX in p.name or ".tmp-" in p.name]
        for p in self.manifest.shard_idx_paths() + [self.manifest.index_path()]:
            rel = os.path.relpath(p, self.root)
            assert (folder / rel).read_bytes() == (self.root / rel).read_bytes()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("relabel") / "synth"
    # the --tiny preset, smaller still (6 x 12 identities, ~440 images), four shards per dataset
    generate_synthetic_set(str(root), "tiny", progress=False, shards=4, workers=1, ids=72, min_ids=12)
    p = Pristine(root)
    assert len(p.rec_paths) == 24 and p.label_map.max() + 1 < len(p.label_map)  # some classes merge
    return p


@pytest.fixture(scope="module")
def reference(pristine, tmp_path_factory):
    """A copy relabelled in place in one uninterrupted run; sets pristine.new_sha."""
    folder = pristine.copy(tmp_path_factory.mktemp("reference") / "set")
    code = relabel_cli(folder)
    assert code == 0
    pristine.new_sha.update({p: _sha256(folder / p) for p in pristine.rec_paths})
    return folder


def relabel_cli(folder, *extra, source=None):
    from recordio_tools import cli

    source = source or ["--from-overlaps", str(folder / "overlaps.json")]
    return cli.main(["relabel", str(folder), *source, *(extra or ["--in-place"])])


def write_map(path, mapping, datasets, **override):
    body = {"format": "fftrain-label-map", "t1": 0.7, "checkpoint": "ckpt",
            "datasets": [{"name": d.name, "num_classes": d.num_classes} for d in datasets],
            "num_classes_fused": int(max(mapping)) + 1, "label_map": [int(v) for v in mapping], **override}
    path.write_text(json.dumps(body))
    return path


# ---------------------------------------------------------------------------------------------
# In place


def test_in_place_changes_only_the_labels(pristine, reference):
    fused_ids = set()
    for rel in pristine.rec_paths:
        old, new = _records(pristine.root / rel), _records(reference / rel)
        assert os.path.getsize(pristine.root / rel) == os.path.getsize(reference / rel)
        assert len(old) == len(new) > 0
        for (k0, h0, img0), (k1, h1, img1) in zip(old, new):
            assert (k0, h0.flag, h0.id, h0.id2, img0) == (k1, h1.flag, h1.id, h1.id2, img1)
            assert class_id_of(h1) == pristine.label_map[class_id_of(h0)]
            fused_ids.add(class_id_of(h1))
    assert fused_ids == set(range(pristine.label_map.max() + 1))
    assert pristine.shard_states(reference).count("new") == 24
    pristine.assert_finished(reference)  # also: every .idx and train.idx byte-identical
    manifest = json.loads((reference / "manifest.json").read_text())
    original = json.loads((pristine.root / "manifest.json").read_text())
    assert manifest["datasets"] == original["datasets"]
    assert manifest["num_classes_fused"] == pristine.label_map.max() + 1
    assert manifest["label_map_sha256"] == relabel_mod.label_map_sha256(pristine.label_map)
    assert json.loads((reference / manifest["label_map_file"]).read_text())["label_map"] == pristine.label_map.tolist()
    assert json.loads((reference / "ms1m" / "dataset.json").read_text())["labels"] == "fused"


def test_dali_reads_the_relabelled_set_through_train_idx(pristine, reference):
    dali = pytest.importorskip("nvidia.dali")
    manifest = load_manifest(str(reference))
    rec_paths, index = manifest.rec_paths(), manifest.index_path()

    @dali.pipeline_def(batch_size=manifest.num_images, num_threads=1, device_id=None)
    def labels_pipe():
        _, labels = dali.fn.readers.mxnet(path=rec_paths, index_path=[index], random_shuffle=False)
        return labels

    pipe = labels_pipe()
    pipe.build()
    (labels,) = pipe.run()
    got = np.stack([np.array(labels[i]) for i in range(len(labels))])
    got_ids = got[:, 0].astype(np.int64) + got[:, 1].astype(np.int64)
    expected = [pristine.label_map[class_id_of(h)] for rel in pristine.rec_paths
                for _, h, _ in _records(pristine.root / rel)]
    assert got_ids.tolist() == [int(v) for v in expected]


def test_rerun_after_completion_is_a_no_op_and_another_map_is_refused(pristine, reference, tmp_path, capsys):
    folder = shutil.copytree(reference, tmp_path / "set")
    before = folder_snapshot(folder)
    code, out, _ = run_cli(capsys, "relabel", folder, "--from-overlaps", folder / "overlaps.json", "--in-place")
    assert code == 0 and "nothing to do" in out
    assert folder_snapshot(folder) == before
    identity = write_map(tmp_path / "identity.json", range(len(pristine.label_map)), pristine.manifest.datasets)
    code, _, err = run_cli(capsys, "relabel", folder, "--label-map", identity, "--in-place")
    assert code == 2 and "already fused in place with another label map" in err
    assert folder_snapshot(folder) == before


def test_label_map_file_from_fuse_applies_like_the_ground_truth(pristine, reference, tmp_path, capsys):
    folder = pristine.copy(tmp_path / "set")
    path = write_map(tmp_path / "label_map.json", pristine.label_map, pristine.manifest.datasets)
    code, out, err = run_cli(capsys, "relabel", folder, "--label-map", path, "--in-place")
    assert code == 0, err
    pristine.assert_finished(folder)


def _flag0_set(root, merge_fused_id=1):
    """Two datasets of two classes each, labels stored as one float (flag 0) like imported MXNet files."""
    rng = np.random.default_rng(0)
    infos, folders = [], []
    for d, name in enumerate(["a", "b"]):
        folder = root / name
        folder.mkdir(parents=True)
        with RecordWriter(str(folder / "shard-00000.rec")) as writer:
            for key in range(6):
                writer.write(key, pack(IRHeader(0, float(2 * d + key % 2), key, 0), jpeg_bytes(rng)))
        info = DatasetInfo(name, 2, 6, 2 * d, [Shard("shard-00000.rec", "shard-00000.idx", 6)])
        write_dataset_info(str(folder), info)
        infos.append(info)
        folders.append(str(folder))
    write_manifest(str(root), infos, folders)
    return infos


def test_flag0_labels_stay_one_float(tmp_path, capsys):
    infos = _flag0_set(tmp_path / "set")
    mapping = [0, 1, 2, 1]  # b's class 1 (source 3) is a's class 1
    path = write_map(tmp_path / "map.json", mapping, infos)
    sizes = [os.path.getsize(tmp_path / "set" / n / "shard-00000.rec") for n in "ab"]
    code, _, err = run_cli(capsys, "relabel", tmp_path / "set", "--label-map", path, "--in-place")
    assert code == 0, err
    for d, name in enumerate("ab"):
        rec = tmp_path / "set" / name / "shard-00000.rec"
        assert os.path.getsize(rec) == sizes[d]
        for key, header, _ in _records(rec):
            assert header.flag == 0 and header.label == mapping[2 * d + key % 2]


def test_flag0_fused_id_too_large_fails_before_anything_changes(tmp_path, monkeypatch):
    infos = _flag0_set(tmp_path / "set")
    manifest = load_manifest(str(tmp_path / "set"))
    label_map = relabel_mod.read_label_map(str(write_map(tmp_path / "map.json", [0, 1, 2, 3], infos)), manifest)
    monkeypatch.setattr(relabel_shards, "FLOAT_EXACT_LIMIT", 3)  # pretend fused id 3 cannot be a float32
    before = folder_snapshot(tmp_path / "set")
    with pytest.raises(RecordIOError, match=r"b/shard-00000.rec: key 1: one-float label .* use --out"):
        relabel_mod.relabel_in_place(str(tmp_path / "set"), label_map)
    after = folder_snapshot(tmp_path / "set")
    after.pop(relabel_mod.LOCK_FILE)
    assert after == before  # not even a journal


# ---------------------------------------------------------------------------------------------
# --out and bad maps


def test_out_writes_a_fused_training_set(pristine, tmp_path, capsys):
    before = folder_snapshot(pristine.root)
    path = write_map(tmp_path / "label_map.json", pristine.label_map, pristine.manifest.datasets)
    out = tmp_path / "fused_set"
    code, stdout, err = run_cli(capsys, "relabel", pristine.root, "--label-map", path, "--out", out, "--shards", "3")
    assert code == 0, err
    assert folder_snapshot(pristine.root) == before
    manifest = load_manifest(str(out))
    num_fused = int(pristine.label_map.max()) + 1
    assert manifest.dataset_names == ["fused"] and manifest.num_classes == num_fused
    assert len(manifest.rec_paths()) == 3
    got = sorted((class_id_of(h), img) for rec in manifest.rec_paths() for _, h, img in _records(rec))
    expected = sorted((int(pristine.label_map[class_id_of(h)]), img) for rel in pristine.rec_paths
                      for _, h, img in _records(pristine.root / rel))
    assert got == expected
    body = json.loads((out / "manifest.json").read_text())
    assert body["relabel"]["label_map_sha256"] == relabel_mod.label_map_sha256(pristine.label_map)
    assert json.loads((out / "label_map.json").read_text())["label_map"] == pristine.label_map.tolist()
    # the trainer's reader takes it as it is
    from fftrain.data.records import RecordSet

    records = RecordSet(manifest)
    records.validate()
    _, labels = records.read_batch(np.arange(len(records)))
    assert sorted(labels.tolist()) == sorted(c for c, _ in expected)
    records.close()


BAD_MAPS = {  # case: (fields replaced, given C source classes; the error it gives)
    "format": (lambda c: {"format": "something-else"}, r"not an fftrain label map"),
    "length": (lambda c: {"label_map": list(range(c - 1))},
               r"label map has {c1} entries but .*manifest.json has {c} source classes"),
    "names": (lambda c: {"datasets": "rename"}, r"datasets .* do not match"),
    "counts": (lambda c: {"datasets": "recount"}, r"datasets .* do not match"),
    "gap": (lambda c: {"label_map": [0] + list(range(2, c + 1))}, r"not contiguous 0\.\.{c}: 1 unused, first 1"),
    "num_fused": (lambda c: {"num_classes_fused": c + 5}, r"num_classes_fused is {c5} but the map uses ids 0\.\.{c1}"),
    "negative": (lambda c: {"label_map": [-1] + list(range(1, c))}, r"source class 0 maps to negative id -1"),
}


@pytest.mark.parametrize("case", sorted(BAD_MAPS))
def test_bad_label_maps_are_refused_naming_the_file(pristine, tmp_path, capsys, case):
    make, message = BAD_MAPS[case]
    c = len(pristine.label_map)
    override, message = make(c), message.format(c=c, c1=c - 1, c5=c + 5)
    datasets = [{"name": d.name, "num_classes": d.num_classes} for d in pristine.manifest.datasets]
    if override.get("datasets") == "rename":
        datasets[2]["name"] = "celebb"
    elif override.get("datasets") == "recount":
        datasets[0]["num_classes"] += 1
    body = {"format": "fftrain-label-map", "datasets": datasets, "label_map": list(range(c)), "t1": 0.7}
    body.update({k: v for k, v in override.items() if k != "datasets"})
    path = tmp_path / "bad_map.json"
    path.write_text(json.dumps(body))
    code, _, err = run_cli(capsys, "relabel", pristine.root, "--label-map", path, "--out", tmp_path / "out")
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Interruptions


def _start(folder, kill=None, source=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(relabel_mod.KILL_ENV, None)
    if kill:
        env[relabel_mod.KILL_ENV] = kill
    source = source or ["--from-overlaps", str(folder / "overlaps.json")]
    return subprocess.Popen([sys.executable, "-m", "recordio_tools", "relabel", str(folder), *source, "--in-place"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _journal(folder):
    path = folder / relabel_mod.JOURNAL_FILE
    return json.loads(path.read_text()) if path.exists() else None


# (point, N): N-th record written (~18 per shard: 100 is mid-shard in shard 6), N-th shard otherwise
KILL_POINTS = [("record", 100), ("pending", 9), ("renamed", 14), ("done", 23), ("manifest", 1)]


@pytest.mark.parametrize("point,n", KILL_POINTS)
def test_killed_at_a_fixed_point_then_rerun(pristine, reference, tmp_path, point, n):
    folder = pristine.copy(tmp_path / "set")
    proc = _start(folder, kill=f"{point}:{n}")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    states = pristine.shard_states(folder)  # every shard wholly old or wholly new
    journal = _journal(folder)
    changed = [i for i, p in enumerate(pristine.rec_paths) if pristine.old_sha[p] != pristine.new_sha[p]]
    entries = journal["shards"] if journal else {}
    for i, rel in enumerate(pristine.rec_paths):  # the journal agrees with the files
        if i in changed and rel not in entries:
            assert states[i] == "old"
        elif i in changed and entries[rel]["state"] == "done":
            assert states[i] == "new"
    if point == "record":  # killed mid-shard: the shards before it done, nothing pending
        ends = np.cumsum([s.num_images for d in pristine.manifest.datasets for s in d.shards])
        assert [s["state"] for s in entries.values()] == ["done"] * int((ends < n).sum())
    elif point in ("pending", "renamed"):
        rel = pristine.rec_paths[n - 1]
        assert journal["shards"][rel]["state"] == "pending"
        assert n - 1 in changed and states[n - 1] == ("old" if point == "pending" else "new")
        assert [s["state"] for s in journal["shards"].values()].count("done") == n - 1
    elif point == "done":
        assert [s["state"] for s in journal["shards"].values()] == ["done"] * n
        assert all(states[i] == "new" for i in changed if i < n) and all(states[i] == "old" for i in changed if i >= n)
    else:
        assert journal["state"] == "running" and states == ["new"] * 24
    if point == "pending" and n == 9:  # a different map may not take over a half-done run
        identity = write_map(tmp_path / "identity.json", range(len(pristine.label_map)), pristine.manifest.datasets)
        assert relabel_cli(folder, source=["--label-map", str(identity)]) == 2
        assert pristine.shard_states(folder) == states
    assert relabel_cli(folder) == 0
    pristine.assert_finished(folder)


def test_killed_before_the_first_rename_a_new_map_may_start_over(pristine, reference, tmp_path):
    folder = pristine.copy(tmp_path / "set")
    proc = _start(folder, kill="record:5")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    identity = write_map(tmp_path / "identity.json", range(len(pristine.label_map)), pristine.manifest.datasets)
    assert relabel_cli(folder, source=["--label-map", str(identity)]) == 0
    assert [_sha256(folder / p) for p in pristine.rec_paths] == [pristine.old_sha[p] for p in pristine.rec_paths]
    assert _journal(folder)["state"] == "complete"


def test_killed_at_random_moments_then_rerun(pristine, reference, tmp_path):
    rng = random.Random(1234)
    interrupted = 0
    for trial in range(4):
        folder = pristine.copy(tmp_path / f"set{trial}")
        proc = _start(folder)
        deadline = time.monotonic() + 30
        while proc.poll() is None and not (folder / relabel_mod.JOURNAL_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.3))  # the rewrite takes about 0.3 s on this set (fsyncs)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        states = pristine.shard_states(folder)
        journal = _journal(folder)
        if journal is None or journal["state"] != "complete":
            interrupted += 1
        print(f"trial {trial}: shards new/old {states.count('new')}/{states.count('old')}, journal "
              f"{journal and journal['state']}, {journal and len(journal['shards'])} entries")
        assert relabel_cli(folder) == 0, f"trial {trial}: states before the rerun {states}"
        pristine.assert_finished(folder)
    assert interrupted >= 1


def test_ctrl_c_mid_shard_removes_the_temporary_and_a_rerun_finishes(pristine, reference, tmp_path, capsys,
                                                                     monkeypatch):
    folder = pristine.copy(tmp_path / "set")
    patch, calls = relabel_shards._patch_label, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 50:
            raise KeyboardInterrupt
        return patch(*args)

    monkeypatch.setattr(relabel_shards, "_patch_label", interrupted)
    code, _, err = run_cli(capsys, "relabel", folder, "--from-overlaps", folder / "overlaps.json", "--in-place")
    assert code == 130 and "run the same command again to finish" in err
    assert not [p for p in folder.rglob("*") if relabel_mod.TMP_SUFFIX in p.name]
    assert _journal(folder)["state"] == "running"
    pristine.shard_states(folder)
    monkeypatch.setattr(relabel_shards, "_patch_label", patch)
    assert relabel_cli(folder) == 0
    pristine.assert_finished(folder)
