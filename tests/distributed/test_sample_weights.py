"""Per-sample loss weights: the Partial-FC loss against a weighted reference (no group, gloo 1 and 2
ranks, dataset-aware and agnostic), and the weights' way from dataset.json through build and the
loader to the batch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dist_harness import run_distributed
from fftrain.distributed import DistContext, all_reduce_
from fftrain.head.margins import ArcFace
from fftrain.head.partial_fc import PartialFCHead
from partial_fc_helpers import D, make_problem

MARGIN = ArcFace(scale=8.0, margin=0.4)
C, B = 13, 4


def weighted_reference(problem, weights, aware):
    """sum_i w_i L_i / N and the gradients of x, P and W, from the formula."""
    P = problem["P"].clone().requires_grad_()
    W = problem["W"].clone().requires_grad_()
    x = problem["inp"] @ P
    x.retain_grad()
    labels, table = problem["labels"], problem["class_dataset"]
    cos = F.normalize(x) @ F.normalize(W).T
    theta = torch.acos(cos.gather(1, labels[:, None]))
    onehot = F.one_hot(labels, len(W)).bool()
    logits = MARGIN.scale * torch.where(onehot, torch.cos(theta + MARGIN.margin), cos)
    if aware:
        logits = logits.masked_fill((table[None, :] != table[labels][:, None]) & ~onehot, -math.inf)
    loss = (F.cross_entropy(logits, labels, reduction="none") * weights).mean()
    loss.backward()
    return {"loss": loss.item(), "x": x.grad, "P": P.grad, "W": W.grad}


def _rank_step(ctx: DistContext, problem, weights, aware, use_weights=True):
    head = PartialFCHead(C, D, margin=MARGIN, group=ctx.group, dtype=torch.float64, momentum=0.0, weight_decay=0.0)
    head.weight.data.copy_(problem["W"][head.start:head.end])
    batch = len(problem["labels"]) // ctx.world_size
    rows = slice(ctx.rank * batch, (ctx.rank + 1) * batch)
    P = problem["P"].clone().requires_grad_()
    x = problem["inp"][rows] @ P
    x.retain_grad()
    table = problem["class_dataset"] if aware else None
    loss = head(x, problem["labels"][rows], class_dataset=table,
                sample_weight=weights[rows] if use_weights else None)
    loss.backward()
    dP = all_reduce_(P.grad.clone(), ctx.group) / ctx.world_size
    return {"loss": loss.item(), "x": x.grad / ctx.world_size, "P": dP, "W": head.active_weight.grad.clone(),
            "start": head.start}


def _all_cases(ctx, problem, weights):
    return {aware: _rank_step(ctx, problem, weights, aware) for aware in (True, False)} | {
        "ones": _rank_step(ctx, problem, torch.ones_like(weights), False),
        "none": _rank_step(ctx, problem, weights, False, use_weights=False)}


@pytest.fixture(scope="module", params=[None, 1, 2], ids=["nogroup", "w1", "w2"])
def results(request):
    world = request.param or 1
    problem = make_problem(21, C, world * B)
    weights = torch.rand(world * B, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    weights[0] = 0.0  # a sample that must not count at all
    if request.param is None:
        per_rank = [_all_cases(DistContext(0, 0, 1, torch.device("cpu"), None), problem, weights)]
    else:
        per_rank = run_distributed(_all_cases, request.param, args=(problem, weights))
    return problem, weights, per_rank


def _assemble(per_rank, key):
    rows = [r[key] for r in per_rank]
    W = torch.zeros(C, D, dtype=torch.float64)
    for r in rows:
        W[r["start"]:r["start"] + len(r["W"])] = r["W"]
    assert max(r["loss"] for r in rows) - min(r["loss"] for r in rows) <= 1e-12
    return {"loss": rows[0]["loss"], "x": torch.cat([r["x"] for r in rows]), "P": rows[0]["P"], "W": W}


@pytest.mark.parametrize("aware", [True, False], ids=["dail", "agnostic"])
def test_weighted_loss_and_gradients_equal_the_reference(results, aware):
    problem, weights, per_rank = results
    got, ref = _assemble(per_rank, aware), weighted_reference(problem, weights, aware)
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-9, abs=1e-10)
    for key in ("x", "P", "W"):
        torch.testing.assert_close(got[key], ref[key], atol=1e-10, rtol=1e-9, msg=key)
    assert torch.all(got["x"][0] == 0)  # weight 0: no gradient reaches that sample's embedding


def test_unit_weights_equal_no_weights(results):
    _, _, per_rank = results
    ones, none = _assemble(per_rank, "ones"), _assemble(per_rank, "none")
    assert ones["loss"] == pytest.approx(none["loss"], rel=1e-12)
    for key in ("x", "P", "W"):
        torch.testing.assert_close(ones[key], none[key], atol=1e-12, rtol=1e-12)


def test_weight_of_the_wrong_shape_is_refused():
    problem = make_problem(22, C, B)
    head = PartialFCHead(C, D, margin=MARGIN, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\), got \(3,\)"):
        head(problem["inp"] @ problem["P"], problem["labels"], sample_weight=torch.ones(3))


# ---- the weights on disk --------------------------------------------------------------------


def _weighted_dataset(tmp_path, name="pseudo", weights=None, n=6):
    from recordio_tools.manifest import SAMPLE_WEIGHTS_FILE, read_dataset_info, write_dataset_info
    from recordio_tools.files import atomic_directory
    from recordio_tools.shards import DatasetWriter
    from recordio_tools.synthetic import SIZE
    from recordio_tools.images import encode_jpeg
    from PIL import Image

    folder = tmp_path / name
    jpeg = encode_jpeg(Image.new("RGB", (SIZE, SIZE), (90, 120, 150)), 90)
    with atomic_directory(str(folder)) as tmp:
        writer = DatasetWriter(tmp, name, 2)
        for i in range(n):
            writer.add(i % 3, jpeg)
        writer.finish(3)
        np.save(f"{tmp}/{SAMPLE_WEIGHTS_FILE}", np.arange(n, dtype=np.float32) / n if weights is None else weights)
        info = read_dataset_info(tmp)
        info.sample_weights = SAMPLE_WEIGHTS_FILE
        write_dataset_info(tmp, info)
    return folder


def _build(tmp_path, *folders):
    from recordio_tools.cli import main

    assert main(["build", "--out", str(tmp_path / "train"), *map(str, folders)]) == 0
    return tmp_path / "train"


def test_build_carries_the_weights_and_the_loader_applies_them(tmp_path):
    from fftrain.data.read_spec import prepare
    from fftrain.data.weights import load_sample_weights
    from recordio_tools.manifest import load_manifest

    plain = _weighted_dataset(tmp_path, "plain")
    (plain / "sample_weights.npy").unlink()
    body = json.loads((plain / "dataset.json").read_text())
    del body["sample_weights"]
    (plain / "dataset.json").write_text(json.dumps(body))
    pseudo = _weighted_dataset(tmp_path)  # stored at offset 0, needs 3: build writes a relabelled copy
    train = _build(tmp_path, plain, pseudo)
    manifest = load_manifest(str(train))
    weights = load_sample_weights(manifest)
    # record order: shard 0 holds images 0, 2, 4 and shard 1 images 1, 3, 5 (round robin); the
    # weights file is in record order already, so the combined keys 6.. read it back as written
    np.testing.assert_array_equal(weights, np.concatenate([np.ones(6), np.arange(6) / 6]).astype(np.float32))
    prepared = prepare(manifest, num_shards=1, batch_size=2, device=torch.device("cpu"))
    np.testing.assert_array_equal(prepared.sample_weights, weights)


def test_loader_batches_carry_their_keys(tmp_path):
    from fftrain.data import build_loader

    train = _build(tmp_path, _weighted_dataset(tmp_path))
    loader = build_loader(str(train), backend="torch", shard_id=0, num_shards=1, device="cpu", batch_size=3, seed=0,
                          num_workers=0)
    batch = next(iter(loader))
    assert batch.keys is not None and len(batch.keys) == 3
    from fftrain.data.records import RecordSet
    from recordio_tools.manifest import load_manifest

    records = RecordSet(load_manifest(str(train)))
    np.testing.assert_array_equal(records.read_batch(batch.keys)[1], batch.source.numpy())
    loader.close()


@pytest.mark.parametrize("weights,message", [
    (np.ones(5, np.float32), r"expected 6 float weights .* got float32 \(5,\)"),
    (np.array([1, 1, 1, 1, 1, -1], np.float32), "weight -1.0 of image 5 is not a finite number >= 0"),
    (np.arange(6), "expected 6 float weights"),
])
def test_bad_weight_files_are_named(tmp_path, weights, message):
    from fftrain.data import DataError
    from fftrain.data.weights import load_sample_weights
    from recordio_tools.manifest import load_manifest

    train = _build(tmp_path, _weighted_dataset(tmp_path, weights=weights))
    with pytest.raises(DataError, match=message):
        load_sample_weights(load_manifest(str(train)))


def _distinct_weighted_dataset(tmp_path, n=10, shards=2):
    """Images i = 0..n-1 of grey level 10 * i (so a record tells which image it is), weight i / n each."""
    from PIL import Image

    from recordio_tools.files import atomic_directory
    from recordio_tools.images import encode_jpeg
    from recordio_tools.shards import DatasetWriter
    from recordio_tools.synthetic import SIZE

    folder = tmp_path / "pseudo"
    with atomic_directory(str(folder)) as tmp:
        writer = DatasetWriter(tmp, "pseudo", shards)
        for i in range(n):
            writer.add(i % 3, encode_jpeg(Image.new("RGB", (SIZE, SIZE), (10 * i,) * 3), 95))
        writer.finish(3, sample_weights=np.arange(n, dtype=np.float32) / n)
    return folder


def _image_ids(manifest) -> np.ndarray:
    """Which image (its grey level / 10) each record of the combined index holds."""
    import io

    from PIL import Image

    from fftrain.data.records import RecordSet

    records = RecordSet(manifest)
    ids = []
    for key in range(len(records)):
        jpeg, _ = records.read(key)
        ids.append(round(np.asarray(Image.open(io.BytesIO(jpeg.tobytes())).convert("L")).mean() / 10))
    records.close()
    return np.array(ids)


def _label_map_file(tmp_path) -> str:
    path = tmp_path / "label_map.json"
    path.write_text(json.dumps({"format": "fftrain-label-map", "datasets": [{"name": "pseudo", "num_classes": 3}],
                                "num_classes_fused": 2, "label_map": [0, 1, 1]}))
    return str(path)


def test_weights_follow_their_images_through_the_writer_and_relabel_copy(tmp_path):
    from recordio_tools.cli import main
    from recordio_tools.manifest import load_manifest, load_sample_weights

    train = _build(tmp_path, _distinct_weighted_dataset(tmp_path))
    manifest = load_manifest(str(train))
    np.testing.assert_allclose(load_sample_weights(manifest), _image_ids(manifest) / 10, rtol=1e-6)
    out = tmp_path / "fused"
    assert main(["relabel", str(train), "--label-map", _label_map_file(tmp_path), "--out", str(out),
                 "--shards", "3"]) == 0
    fused = load_manifest(str(out))
    weights = load_sample_weights(fused)
    assert weights is not None and len(weights) == 10
    np.testing.assert_allclose(weights, _image_ids(fused) / 10, rtol=1e-6)


def test_a_set_fused_in_place_keeps_its_weights_for_training(tmp_path):
    from fftrain.data.read_spec import prepare
    from recordio_tools.cli import main

    train = _build(tmp_path, _distinct_weighted_dataset(tmp_path))
    before = prepare(str(train), num_shards=1, batch_size=2, device=torch.device("cpu")).sample_weights
    assert main(["relabel", str(train), "--label-map", _label_map_file(tmp_path), "--in-place", "--copy-referenced"]) == 0
    after = prepare(str(train), num_shards=1, batch_size=2, device=torch.device("cpu"))
    assert after.manifest.dataset_names == ["fused"]
    np.testing.assert_array_equal(after.sample_weights, before)
