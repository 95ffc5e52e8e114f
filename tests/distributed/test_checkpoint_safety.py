"""Loading a checkpoint never runs code from its files; a damaged newest one is skipped; a full disk keeps the last.

Each planted file carries a pickle whose unpickling would create a marker folder: the load must be
refused with the file named, and the marker must never appear.
"""

import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from dist_harness import run_distributed
from fftrain.training.checkpoint import (CheckpointError, ShardedRows, complete_checkpoints, load_checkpoint, load_partial,
                                resolve_resume, save_checkpoint)
from fftrain.distributed.class_sharding import shard_range
from fftrain.distributed import single_process_context
from recordio_tools.verification_bin import write_verification_bin
from repo_paths import REPO

NUM_CLASSES, DIM = 7, 3


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _full(step):
    return torch.arange(NUM_CLASSES * DIM, dtype=torch.float32).reshape(NUM_CLASSES, DIM) + 100 * step


def _save(ctx, root, step, rows=None):
    full = _full(step) if rows is None else rows
    start, end = shard_range(len(full), ctx.rank, ctx.world_size)
    replicated = {"model": {"w": torch.full((2,), float(step))}, "label_map": torch.arange(NUM_CLASSES),
                  "table": torch.zeros(NUM_CLASSES, dtype=torch.long),
                  "optim": {"param_groups": [{"lr": 0.1 * step, "betas": (0.9, 0.99), "params": ["w"],
                                              "foreach": None}]}}
    meta = {"num_classes_fused": NUM_CLASSES, "num_classes_source": NUM_CLASSES, "embedding_size": DIM,
            "datasets": [{"name": "a", "num_classes": NUM_CLASSES}]}
    return save_checkpoint(root, step, ctx=ctx, replicated=replicated,
                           sharded={"fc_weight": ShardedRows(full[start:end].clone(), len(full))}, meta=meta,
                           rank_state={"torch_rng": torch.get_rng_state()}, keep_last=3)


def _templates(ctx):
    start, end = shard_range(NUM_CLASSES, ctx.rank, ctx.world_size)
    replicated = {"model": {"w": torch.zeros(2)}, "label_map": torch.zeros(NUM_CLASSES, dtype=torch.long),
                  "table": torch.ones(NUM_CLASSES, dtype=torch.long), "optim": {"param_groups": []}}
    return replicated, {"fc_weight": ShardedRows(torch.zeros(end - start, DIM), NUM_CLASSES)}


def _load(ctx, path):
    replicated, sharded = _templates(ctx)
    rank_state = load_checkpoint(path, ctx=ctx, replicated=replicated, sharded=sharded)
    return replicated, sharded["fc_weight"].local, sorted(rank_state)


def _save_two_steps(ctx, root):
    _save(ctx, root, 1)
    return _save(ctx, root, 2)


@pytest.fixture(scope="module")
def two_rank_root(tmp_path_factory):
    """Checkpoints of steps 1 and 2 saved by 2 gloo ranks: two .distcp files and two rank files each."""
    root = str(tmp_path_factory.mktemp("ck2") / "checkpoints")
    run_distributed(_save_two_steps, 2, (root,))
    return root


@pytest.fixture
def marker(tmp_path):
    path = str(tmp_path / "payload-ran")
    yield path
    assert not os.path.exists(path), "a payload in a checkpoint file was executed"


def _copy_root(two_rank_root, tmp_path):
    root = str(tmp_path / "checkpoints")
    shutil.copytree(two_rank_root, root)
    return root, os.path.join(root, "step-00000002")


def _torch_saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _plant(file, marker):
    """Replace `file` with a payload of the same length (so no size check gives it away)."""
    size = os.path.getsize(file)
    if file.endswith((".distcp", ".pt")):
        body = _torch_saved({"x": _Payload(marker)})
    else:
        body = pickle.dumps(_Payload(marker))
    with open(file, "wb") as f:
        f.write(body + b"\0" * max(0, size - len(body)))


def _checkpoint_files(path):
    names = sorted(os.listdir(path))
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "rank0.pt", "rank1.pt", "meta.json",
            "state.json"} <= set(names)
    return names


def test_valid_checkpoint_loads_on_the_same_and_another_number_of_ranks(two_rank_root):
    path = os.path.join(two_rank_root, "step-00000002")
    for rank, (replicated, fc, rank_keys) in enumerate(run_distributed(_load, 2, (path,))):
        start, end = shard_range(NUM_CLASSES, rank, 2)
        assert torch.equal(fc, _full(2)[start:end]) and rank_keys == ["torch_rng"]
    replicated, fc, rank_keys = _load(single_process_context(), path)
    assert torch.equal(fc, _full(2)) and rank_keys == []
    assert torch.equal(replicated["model"]["w"], torch.full((2,), 2.0))
    assert torch.equal(replicated["table"], torch.zeros(NUM_CLASSES, dtype=torch.long))
    # non-tensor state comes back from state.json with its types
    assert replicated["optim"]["param_groups"] == [{"lr": 0.2, "betas": (0.9, 0.99), "params": ["w"], "foreach": None}]


def test_dcp_files_hold_tensors_only(two_rank_root):
    from fftrain.training.checkpoint import read_dcp_metadata
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_dcp_metadata(os.path.join(two_rank_root, "step-00000002", ".metadata"))
    assert all(isinstance(md, TensorStorageMetadata) for md in metadata.state_dict_metadata.values())


@pytest.mark.parametrize("name", [".metadata", "__0_0.distcp", "__1_0.distcp", "rank0.pt", "rank1.pt", "meta.json",
                                  "state.json"])
def test_payload_in_any_checkpoint_file_is_refused_without_running(two_rank_root, tmp_path, marker, name):
    root, path = _copy_root(two_rank_root, tmp_path)
    assert name in _checkpoint_files(path)
    _plant(os.path.join(path, name), marker)
    pattern = f"{name}: .*(refused|not valid JSON|not an fftrain state file)"
    with pytest.raises(CheckpointError, match=pattern):
        _load(single_process_context(), path)
    with pytest.raises(CheckpointError, match=pattern):  # the fuse / eval / export path
        load_partial(path, {"sharded": {"fc_weight": torch.zeros(NUM_CLASSES, DIM)}})
    if not name.endswith(".distcp"):  # tensor files are read by the load itself, above
        with pytest.raises(CheckpointError, match=pattern):  # --resume PATH checks before any load
            resolve_resume(path, root, single_process_context())


def test_non_tensor_entry_in_dcp_files_is_refused_without_running(two_rank_root, tmp_path, marker):
    """DCP would read a non-tensor entry with torch.load(weights_only=False); plant one under a tensor's name."""
    import torch.distributed.checkpoint as dcp

    root, path = _copy_root(two_rank_root, tmp_path)
    for name in os.listdir(path):
        if name.endswith(".distcp") or name == ".metadata":
            os.remove(os.path.join(path, name))
    dcp.save({"model": {"w": _Payload(marker)}, "label_map": torch.arange(NUM_CLASSES),
              "table": torch.zeros(NUM_CLASSES, dtype=torch.long),
              "sharded": {"fc_weight": _full(2)}}, checkpoint_id=path, no_dist=True)
    with pytest.raises(CheckpointError, match="model.w: refused, a non-tensor entry"):
        _load(single_process_context(), path)


def test_metadata_payload_is_refused_by_the_commands(two_rank_root, tmp_path, marker):
    root, path = _copy_root(two_rank_root, tmp_path)
    _plant(os.path.join(path, ".metadata"), marker)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    write_verification_bin(tmp_path / "none.bin", [b"not read"] * 2, [True])  # the checkpoint is refused first
    for command in (["fuse", "--checkpoint", path, "--t1", "0.7", "--dry-run"],
                    ["eval", "--checkpoint", path, str(tmp_path / "none.bin")],
                    ["export", "--checkpoint", path, "--onnx", str(tmp_path / "m.onnx")]):
        proc = subprocess.run([sys.executable, "-m", "fftrain.cli", *command], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and ".metadata: refused" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", [".metadata", "__1_0.distcp", "rank1.pt", "state.json", "meta.json"])
def test_truncated_newest_checkpoint_falls_back_to_the_previous(two_rank_root, tmp_path, caplog, name):
    root, newest = _copy_root(two_rank_root, tmp_path)
    file = os.path.join(newest, name)
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)
    with caplog.at_level(logging.WARNING, logger="fftrain"):
        chosen = resolve_resume("auto", root, single_process_context())
    assert chosen == os.path.join(root, "step-00000001")
    assert any(name in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)
    _, fc, _ = _load(single_process_context(), chosen)
    assert torch.equal(fc, _full(1))
    with pytest.raises(CheckpointError, match=name):
        resolve_resume(newest, root, single_process_context())


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield str(mount)
    subprocess.run(["umount", str(mount)], check=True)


def _fill_disk_on_second_save(ctx, root):
    _save(ctx, root, 1)
    try:
        _save(ctx, root, 2, rows=torch.ones(200_000, DIM))
    except CheckpointError as e:
        return str(e)
    return None


def test_disk_full_during_save_keeps_the_last_checkpoint(small_disk):
    root = os.path.join(small_disk, "checkpoints")
    message = _fill_disk_on_second_save(single_process_context(), root)
    assert message == f"no space left on {root}; the last complete checkpoint is kept: {root}/step-00000001"
    assert sorted(os.listdir(root)) == ["step-00000001"]  # no partial folder
    assert torch.equal(_load(single_process_context(), complete_checkpoints(root)[-1][1])[1], _full(1))


def test_disk_full_during_save_on_two_ranks(small_disk):
    root = os.path.join(small_disk, "checkpoints")
    messages = run_distributed(_fill_disk_on_second_save, 2, (root,))
    assert messages == [f"no space left on {root}; the last complete checkpoint is kept: {root}/step-00000001"] * 2
    assert sorted(os.listdir(root)) == ["step-00000001"]


def test_state_json_is_plain_json(two_rank_root):
    with open(os.path.join(two_rank_root, "step-00000002", "state.json")) as f:
        assert json.load(f)["entries"]


def _rewrite_json(file, change):
    with open(file) as f:
        body = json.load(f)
    change(body)
    with open(file, "w") as f:
        f.write(json.dumps(body))


def test_metadata_cannot_set_attributes_of_its_classes(two_rank_root, tmp_path):
    """A .metadata that replaces `Metadata.__setstate__` (allowed types only, no code) is refused before it
    changes anything, so a good checkpoint still loads in the same process."""
    from torch.distributed.checkpoint.metadata import Metadata

    root, path = _copy_root(two_rank_root, tmp_path)
    attack = (b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\nN}X\x0c\x00\x00\x00__setstate__"
              b"ctorch\nSize\ns\x86b.")
    with open(os.path.join(path, ".metadata"), "wb") as f:
        f.write(attack)
    with pytest.raises(CheckpointError, match=r"\.metadata: refused.*sets attributes of the class Metadata"):
        _load(single_process_context(), path)
    assert "__setstate__" not in vars(Metadata)
    replicated, rows, _ = _load(single_process_context(), os.path.join(two_rank_root, "step-00000002"))
    assert torch.equal(rows, _full(2))


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(num_classes_fused=10 ** 12, num_classes_source=10 ** 12,
                        datasets=[{"name": "a", "num_classes": 10 ** 12}]), "do not match the stored FC weight"),
    (lambda m: m.update(world_size="2"), "field 'world_size' must be an integer >= 1"),
    (lambda m: m.pop("world_size"), "field 'world_size' missing"),
    (lambda m: m.update(datasets="a"), "field 'datasets' must be a list"),
    (lambda m: m.update(num_classes_fused=float("nan")), "not valid JSON|non-finite number NaN"),
])
def test_meta_claims_are_checked_before_anything_is_allocated(two_rank_root, tmp_path, capsys, change, message):
    from fftrain.cli import main

    root, path = _copy_root(two_rank_root, tmp_path)
    _rewrite_json(os.path.join(path, "meta.json"), change)
    code = main(["fuse", "--checkpoint", path, "--t1", "0.7", "--dry-run", "--out", str(tmp_path / "fuse")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "meta.json" in err, err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "fuse").exists()


def test_a_checkpoint_path_that_is_a_file_is_refused(tmp_path, capsys):
    from fftrain.cli import main

    (tmp_path / "ckpt").write_text("not a folder")
    code = main(["fuse", "--checkpoint", str(tmp_path / "ckpt"), "--t1", "0.7", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "a file, not a checkpoint folder" in err, err


def _deep(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("change,message", [
    (lambda b: b.update(entries=[[["optim", "param_groups"], [{"lr": "fast"}]]]), r"lr must be a number"),
    (lambda b: b.update(deep=_deep(100)), "nested deeper than 64"),
])
def test_state_json_values_of_the_wrong_kind_are_refused_naming_the_key(two_rank_root, tmp_path, change, message):
    root, path = _copy_root(two_rank_root, tmp_path)
    _rewrite_json(os.path.join(path, "state.json"), change)
    ctx = single_process_context()
    replicated, sharded = _templates(ctx)
    replicated["optim"] = {"param_groups": [{"lr": 0.5, "betas": (0.9, 0.99), "params": ["w"], "foreach": None}]}
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, ctx=ctx, replicated=replicated, sharded=sharded)


def test_fuse_out_never_replaces_what_fuse_did_not_write(two_rank_root, tmp_path, capsys):
    from fftrain.cli import main

    path = os.path.join(two_rank_root, "step-00000002")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fusion_report.json").write_text("my own notes")
    code = main(["fuse", "--checkpoint", path, "--t1", "0.7", "--dry-run", "--backend", "torch", "--out", str(mine)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not an output of recordio_tools" in err, err
    assert (mine / "fusion_report.json").read_text() == "my own notes"
    out = tmp_path / "fuse"
    for _ in range(2):  # an earlier fuse output is replaced
        assert main(["fuse", "--checkpoint", path, "--t1", "0.7", "--dry-run", "--backend", "torch",
                     "--out", str(out)]) == 0
    assert (out / "fusion_report.json").exists()


def test_a_length_field_in_metadata_cannot_order_memory(two_rank_root, tmp_path):
    import tracemalloc

    root, path = _copy_root(two_rank_root, tmp_path)
    file = os.path.join(path, ".metadata")
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:  # BINBYTES claiming ~2.4 GB right after PROTO (found by the fuzz tier)
        f.write(data[:1] + b"BM" + data[1:])
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"\.metadata: refused, not checkpoint metadata"):
            _load(single_process_context(), path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
