"""The FaceFusion step (fftrain.fusion): kNN, components and guards, reshard, report.

Run: pytest tests/distributed/test_fusion.py
World size 1 runs in this process (group=None); 2 and 4 are one gloo spawn each (module-scoped
fixture), whose results several tests read.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dist_harness import run_distributed
from reshard_reference import whole_shard_merge
from fftrain.distributed.class_sharding import shard_range
from fftrain.distributed import DistContext
from fftrain.config import FusionConfig
from fftrain.fusion import SourceInfo, build_plan, distributed_knn, reshard_merge, run_fusion
from fftrain.fusion import knn as knn_module
from fftrain.data.label_space import min_source_class
from fftrain.fusion.components import candidate_pairs, dedupe_pairs
from fftrain.head.margins import ArcFace
from fftrain.head.partial_fc import PartialFCHead
from fftrain.search import top_k

COUNTS = (100, 101, 100)  # C = 301: uneven shards on 2 and 4 ranks
NAMES = ("alpha", "beta", "gamma")
D = 128
T1 = 0.7
# planted identities (source classes); offsets 0, 100, 201
PLANTED = [(5, 107), (30, 203), (150, 261), (99, 200), (12, 112, 213), (70, 103, 300)]
KNN_SIZES = {1: [23], 2: [17, 9], 4: [7, 0, 11, 5]}  # rows per rank, empty shard included
RAW_D = 16
TINY_CHUNK = 3 * 4 * RAW_D  # bytes: 3 fp32 rows per key chunk and per query block, many chunks per shard
FUSION_CHUNK_ROWS = 20  # run_fusion's kNN chunks (query blocks of 10): 4-15 chunks per shard at W = 4-1
STORAGES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def planted_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    C = sum(COUNTS)
    base = F.normalize(torch.randn(C, D, generator=g), dim=1)
    for grp in PLANTED:
        for m in grp[1:]:
            base[m] = F.normalize(base[grp[0]] + 0.2 * F.normalize(torch.randn(D, generator=g), dim=0), dim=0)
    cos = base @ base.T
    same = torch.zeros(C, C, dtype=torch.bool)
    for grp in PLANTED:
        for a in grp:
            for b in grp:
                same[a, b] = True
    same.fill_diagonal_(True)
    assert cos[same].min() > 0.9 and cos[~same].max() < 0.5, "planted problem not separated"
    norms = 0.5 + 1.5 * torch.rand(C, 1, generator=g)
    weight = base * norms
    momentum = torch.randn(C, D, generator=g)
    class_dataset = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
    # expected: groups ordered by smallest member, contiguous
    group_of = {m: min(grp) for grp in PLANTED for m in grp}
    keys = [group_of.get(c, c) for c in range(C)]
    uniq = sorted(set(keys))
    expected = torch.tensor([uniq.index(k) for k in keys])
    g2 = torch.Generator().manual_seed(seed + 1)
    emb = torch.randn(16, D, generator=g2)
    labels = torch.tensor([5, 107, 12, 112, 213, 0, 1, 300, 70, 103, 99, 200, 150, 261, 44, 250])
    return dict(weight=weight, momentum=momentum, class_dataset=class_dataset, expected=expected,
                emb=emb, labels=labels)


def knn_problem(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(23, 8, generator=g), dim=1)
    groups = torch.randint(0, 3, (23,), generator=g)
    return x, groups


def raw_knn_problem(seed=3):
    """Unnormalised rows of random norms (an FC weight), and a group table."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(23, RAW_D, generator=g) * (0.5 + 1.5 * torch.rand(23, 1, generator=g))
    return w, torch.randint(0, 3, (23,), generator=g)


def reshard_problem(seed=2):
    g = torch.Generator().manual_seed(seed)
    C_old, C_new = 37, 23
    old_to_new = torch.cat([torch.arange(C_new), torch.randint(0, C_new, (C_old - C_new,), generator=g)])
    old_to_new = old_to_new[torch.randperm(C_old, generator=g)]
    w = torch.randn(C_old, 6, generator=g) * (0.5 + torch.rand(C_old, 1, generator=g))
    states = [torch.randn(C_old, 6, generator=g), torch.randn(C_old, 2, 3, generator=g)]
    return old_to_new, C_new, w, states


def brute_knn(x, k, groups=None):
    s = x @ x.T
    s.fill_diagonal_(float("-inf"))
    if groups is not None:
        s.masked_fill_(groups[:, None] == groups[None, :], float("-inf"))
    kk = min(k, x.shape[0])
    vals, idx = torch.topk(s, kk, dim=1)
    idx = torch.where(torch.isneginf(vals), torch.full_like(idx, -1), idx)
    if kk < k:
        vals = torch.cat([vals, torch.full((x.shape[0], k - kk), float("-inf"))], 1)
        idx = torch.cat([idx, torch.full((x.shape[0], k - kk), -1)], 1)
    return vals, idx


def reference_merge(w, states, old_to_new, C_new):
    new_w = torch.empty(C_new, *w.shape[1:])
    new_s = [torch.empty(C_new, *s.shape[1:]) for s in states]
    for n in range(C_new):
        m = torch.nonzero(old_to_new == n).flatten()
        rows = w[m]
        if len(m) == 1:
            new_w[n] = rows[0]
        else:
            norms = rows.norm(dim=1, keepdim=True)
            new_w[n] = F.normalize((rows / norms).mean(0), dim=0) * norms.mean()
        for t, s in zip(new_s, states):
            t[n] = s[m].mean(0)
    return new_w, new_s


def _slice(t, rank, world):
    a, b = shard_range(t.shape[0], rank, world)
    return t[a:b]


def _blockwise_knn(out, raw, W, r, group):
    """The kNN on raw rows in their storage dtype, normalised block by block: default and tiny chunks."""
    w, groups = raw
    sizes = KNN_SIZES[W]
    off = sum(sizes[:r])
    for storage, dtype in STORAGES.items():
        local = w[off:off + sizes[r]].to(dtype)
        for backend in ("faiss", "torch"):
            for use_groups in (False, True):
                for chunk in (None, TINY_CHUNK):
                    out[("blockwise", storage, backend, use_groups, chunk)] = distributed_knn(
                        local, 5, group, normalize=True, backend=backend, groups=groups if use_groups else None,
                        chunk_bytes=chunk)


def _chunked_fusion(out, problem, W, r, group):
    """run_fusion with FUSION_CHUNK_ROWS-row kNN chunks and half-size query blocks (the module's bound, set for
    the call), both storages."""
    saved = knn_module.CHUNK_BYTES
    knn_module.CHUNK_BYTES = dict(saved, cpu=FUSION_CHUNK_ROWS * 4 * D)
    try:
        for storage, dtype in STORAGES.items():
            for name, config in (("fixed", FusionConfig(t1=T1, knn_k=8, max_component=6)),
                                 ("auto", FusionConfig(t1="auto", knn_k=8))):
                out[("chunked fusion", storage, name)] = run_fusion(
                    _slice(problem["weight"].to(dtype), r, W), [_slice(problem["momentum"].to(dtype), r, W)],
                    class_dataset=problem["class_dataset"], label_map=None, source_info=None, config=config,
                    group=group)
    finally:
        knn_module.CHUNK_BYTES = saved


def _checks(ctx: DistContext, problem, knn, raw, report_dir):
    """Everything one world size runs; returns plain tensors and data for the parent."""
    W, r, group = ctx.world_size, ctx.rank, ctx.group
    out = {}
    # kNN on uneven shards, both backends, with and without groups; tiny blocks for torch
    x, groups = knn
    sizes = KNN_SIZES[W]
    off = sum(sizes[:r])
    local = x[off:off + sizes[r]]
    for backend in ("faiss", "torch"):
        for use_groups in (False, True):
            out[("knn", backend, use_groups)] = distributed_knn(
                local, 5, group, backend=backend, groups=groups if use_groups else None, max_block_elems=16)
    _blockwise_knn(out, raw, W, r, group)
    _chunked_fusion(out, problem, W, r, group)
    # reshard with an arbitrary many-to-one map
    old_to_new, C_new, w, states = reshard_problem()
    out["reshard"] = reshard_merge(_slice(w, r, W), [_slice(s, r, W) for s in states], old_to_new, C_new, group)
    # streaming: one row, three rows and the default chunk per step, in both storage dtypes
    for dtype in (torch.float32, torch.bfloat16):
        ws, ss = w.to(dtype), [s.to(dtype) for s in states]
        for chunk in (1, 3, None):
            out[("stream", dtype, chunk)] = reshard_merge(_slice(ws, r, W), [_slice(s, r, W) for s in ss],
                                                          old_to_new, C_new, group, chunk_rows=chunk)
            own = [_slice(t, r, W).clone() for t in (ws, *ss)]  # in place overwrites them
            out[("in place", dtype, chunk)] = reshard_merge(own[0], own[1:], old_to_new, C_new, group,
                                                            chunk_rows=chunk, in_place=True) + (own,)
    # the fusion itself
    res = run_fusion(_slice(problem["weight"], r, W), [_slice(problem["momentum"], r, W)],
                     class_dataset=problem["class_dataset"], label_map=None,
                     source_info=SourceInfo.from_counts(NAMES, COUNTS),
                     config=FusionConfig(t1=T1, knn_k=8, max_component=6), group=group, report_dir=report_dir)
    out["fusion"] = res
    own = [_slice(problem[k], r, W).clone() for k in ("weight", "momentum")]
    out["fusion in place"] = run_fusion(own[0], own[1:], class_dataset=problem["class_dataset"], label_map=None,
                                        source_info=None, config=FusionConfig(t1=T1, knn_k=8, max_component=6),
                                        group=group, in_place=True), own
    for name, config in (("auto", FusionConfig(t1="auto", knn_k=8)),
                         ("mutual", FusionConfig(t1=T1, knn_k=8, mutual_nn=True))):
        out[name] = run_fusion(_slice(problem["weight"], r, W), [], class_dataset=problem["class_dataset"],
                               label_map=None, source_info=None, config=config, group=group)
    # the sharded head on the new classes: agnostic loss with the new labels
    head = PartialFCHead(res.num_classes_new, D, margin=ArcFace(), group=group)
    head.reset_classes(res.num_classes_new, res.new_local_weight, res.new_states[0])
    head.eval()
    with torch.no_grad():
        emb = problem["emb"].chunk(W)[r]
        out["loss"] = float(head(emb, res.new_label_map[problem["labels"].chunk(W)[r]]))
    return out


@pytest.fixture(scope="module")
def problems():
    return planted_problem(), knn_problem(), reshard_problem(), raw_knn_problem()


@pytest.fixture(scope="module")
def runs(problems, tmp_path_factory):
    """Per world size: the list of per-rank results of `_checks`."""
    problem, knn, _, raw = problems
    report_dir = str(tmp_path_factory.mktemp("fusion_report"))
    ctx1 = DistContext(0, 0, 1, torch.device("cpu"), None)
    out = {1: [_checks(ctx1, problem, knn, raw, None)]}
    for W in (2, 4):
        out[W] = run_distributed(_checks, W, args=(problem, knn, raw, report_dir if W == 2 else None))
    out["report_dir"] = report_dir
    return out


def _cat(results, key):
    parts = [r[key] for r in results]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("use_groups", [False, True])
def test_knn_backends_match_brute_force(runs, problems, world, use_groups):
    x, groups = problems[1]
    ref_s, ref_i = brute_knn(x, 5, groups if use_groups else None)
    for backend in ("faiss", "torch"):
        s, i = _cat(runs[world], ("knn", backend, use_groups))
        assert torch.equal(i, ref_i), (backend, world)
        torch.testing.assert_close(s, ref_s, atol=1e-5, rtol=0)


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("storage", list(STORAGES))
@pytest.mark.parametrize("use_groups", [False, True])
def test_blockwise_knn_of_raw_rows_is_top_k_over_the_whole_normalised_matrix(runs, problems, world, storage,
                                                                             use_groups):
    """The old way (one fp32 normalised copy of all rows, `top_k` over itself) against raw shards in their
    storage dtype walked in 3-row chunks and query blocks on uneven shards (W = 4: a rank with no rows)."""
    w, groups = problems[3]
    unit = F.normalize(w.to(STORAGES[storage]).float(), dim=1)
    g = groups if use_groups else None
    for backend in ("faiss", "torch"):
        ref_s, ref_i = top_k(unit, unit, 5, backend=backend, self_keys=True, query_groups=g, key_groups=g)
        for chunk in (None, TINY_CHUNK):
            s, i = _cat(runs[world], ("blockwise", storage, backend, use_groups, chunk))
            assert torch.equal(i, ref_i), (backend, chunk)
            if world == 1 and chunk is None:  # one chunk and one query block: top_k's very search, bit for bit
                assert torch.equal(s, ref_s), backend
            else:  # a GEMM's rounding follows its block shapes: the same cosines to a few ulp
                torch.testing.assert_close(s, ref_s, rtol=0, atol=3e-7)


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("storage", list(STORAGES))
def test_fusion_with_tiny_knn_chunks_is_bit_identical_to_one_process(runs, problems, world, storage):
    """Label map, merged rows and momentum bit for bit against one process with the default chunk (one chunk)."""
    problem, dtype = problems[0], STORAGES[storage]
    for name, config in (("fixed", FusionConfig(t1=T1, knn_k=8, max_component=6)),
                         ("auto", FusionConfig(t1="auto", knn_k=8))):
        ref = run_fusion(problem["weight"].to(dtype), [problem["momentum"].to(dtype)],
                         class_dataset=problem["class_dataset"], label_map=None, source_info=None, config=config)
        results = [r[("chunked fusion", storage, name)] for r in runs[world]]
        assert torch.equal(ref.new_label_map, problem["expected"]), name
        for res in results:
            assert torch.equal(res.new_label_map, ref.new_label_map) and res.components == ref.components
            assert res.threshold.t1 == ref.threshold.t1, name
        assert torch.equal(torch.cat([res.new_local_weight for res in results]), ref.new_local_weight)
        assert torch.equal(torch.cat([res.new_states[0] for res in results]), ref.new_states[0])


def test_knn_pads_when_fewer_than_k_and_checks_inputs():
    x, groups = knn_problem()
    x = x[:4]
    for backend in ("faiss", "torch"):
        s, i = distributed_knn(x, 6, None, backend=backend, groups=groups[:4])
        ref_s, ref_i = brute_knn(x, 6, groups[:4])
        assert torch.equal(i, ref_i) and torch.equal(torch.isneginf(s), torch.isneginf(ref_s))
    with pytest.raises(ValueError, match="unknown kNN backend 'annoy'"):
        distributed_knn(x, 2, None, backend="annoy")
    with pytest.raises(ValueError, match=r"groups must have shape \[4\]"):
        distributed_knn(x, 2, None, groups=groups)
    with pytest.raises(ValueError, match="must be a float tensor"):
        distributed_knn(torch.ones(4, 2, dtype=torch.int64), 2, None)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_planted_duplicates_are_exactly_the_merges(runs, problems, world):
    expected = problems[0]["expected"]
    for rank_result in runs[world]:
        res = rank_result["fusion"]
        found = {tuple(c.members) for c in res.components}
        assert found == {tuple(sorted(g)) for g in PLANTED}  # precision and recall 1
        assert torch.equal(res.new_label_map, expected)
        assert res.num_classes_new == sum(COUNTS) - sum(len(g) - 1 for g in PLANTED)
        assert res.rejected == []
        # dataset table: the dataset of the smallest member
        cd = problems[0]["class_dataset"]
        for c in res.components:
            assert int(res.new_class_dataset[c.new_id]) == int(cd[min(c.members)])


def test_fusion_result_is_identical_across_world_sizes(runs, problems):
    problem = problems[0]
    ref_w, (ref_m,) = reference_merge(problem["weight"], [problem["momentum"]], problem["expected"],
                                      int(problem["expected"].max()) + 1)
    for world in (1, 2, 4):
        w = torch.cat([r["fusion"].new_local_weight for r in runs[world]])
        m = torch.cat([r["fusion"].new_states[0] for r in runs[world]])
        torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(m, ref_m, atol=1e-6, rtol=1e-6)
        if world > 1:  # same arithmetic in the same order: bit for bit
            assert torch.equal(w, torch.cat([r["fusion"].new_local_weight for r in runs[1]]))
    # unmerged rows are copied exactly
    merged_old = {m for g in PLANTED for m in g}
    keep = torch.tensor([c for c in range(sum(COUNTS)) if c not in merged_old])
    assert torch.equal(ref_w[problem["expected"][keep]], problem["weight"][keep])


@pytest.mark.parametrize("world", [1, 2, 4])
def test_reshard_matches_single_process_reference(runs, problems, world):
    old_to_new, C_new, w, states = problems[2]
    ref_w, ref_s = reference_merge(w, states, old_to_new, C_new)
    parts = [r["reshard"] for r in runs[world]]
    for rank, (pw, ps) in enumerate(parts):
        a, b = shard_range(C_new, rank, world)
        assert pw.shape == (b - a, 6) and ps[1].shape == (b - a, 2, 3)
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), ref_w, atol=1e-6, rtol=1e-6)
    for j in range(2):
        torch.testing.assert_close(torch.cat([p[1][j] for p in parts]), ref_s[j], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["stream", "in place"])
@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streaming_reshard_is_bit_identical_to_the_whole_shard_merge(runs, problems, world, dtype, mode):
    """Copying ('stream') and in place; a many-to-one map in any order, not only fusion's compaction."""
    old_to_new, C_new, w, states = problems[2]
    ref_w, ref_s = whole_shard_merge(w.to(dtype), [s.to(dtype) for s in states], old_to_new, C_new)
    for chunk in (1, 3, None):
        parts = [r[(mode, dtype, chunk)] for r in runs[world]]
        assert torch.equal(torch.cat([p[0] for p in parts]), ref_w), (world, chunk)
        for j in range(2):
            assert torch.equal(torch.cat([p[1][j] for p in parts]), ref_s[j]), (world, chunk, j)
        if mode == "in place":  # views of the inputs: nothing new was allocated for the shard
            for new_w, new_s, own in parts:
                assert new_w.data_ptr() == own[0].data_ptr()
                assert [t.data_ptr() for t in new_s] == [t.data_ptr() for t in own[1:]]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_fusion_in_place_equals_fusion_into_a_new_shard(runs, world):
    for r in runs[world]:
        copied, (in_place, own) = r["fusion"], r["fusion in place"]
        assert torch.equal(in_place.new_local_weight, copied.new_local_weight)
        assert torch.equal(in_place.new_states[0], copied.new_states[0])
        assert in_place.new_local_weight.data_ptr() == own[0].data_ptr()


@pytest.mark.parametrize("world", [1, 2, 4])
def test_fusion_rows_are_bit_identical_to_the_whole_shard_merge(runs, problems, world):
    problem = problems[0]
    C_new = int(problem["expected"].max()) + 1
    ref_w, (ref_m,) = whole_shard_merge(problem["weight"], [problem["momentum"]], problem["expected"], C_new)
    results = [r["fusion"] for r in runs[world]]
    assert torch.equal(results[0].new_label_map, problem["expected"])
    assert torch.equal(torch.cat([res.new_local_weight for res in results]), ref_w)
    assert torch.equal(torch.cat([res.new_states[0] for res in results]), ref_m)


def _waiting_peak(old_to_new, chunk):
    """One rank: the most lone rows that arrive (at old row // chunk) before their slot is sent (new row // chunk)."""
    members = torch.bincount(old_to_new)
    spans = [(old // chunk, int(new) // chunk) for old, new in enumerate(old_to_new.tolist()) if members[new] == 1]
    return max([sum(a <= step < f for a, f in spans) for step in range(len(old_to_new))] + [0])


@pytest.mark.parametrize("seed", range(4))
def test_the_in_place_reshard_holds_only_the_rows_that_arrive_before_their_slot_is_free(monkeypatch, seed):
    from fftrain.fusion import reshard

    seen = []

    class Recorded(reshard._Early):
        def __init__(self, chunk):
            super().__init__(chunk)
            seen.append(self)

    monkeypatch.setattr(reshard, "_Early", Recorded)
    g = torch.Generator().manual_seed(seed)
    c_old, c_new = 60, 45
    any_order = torch.cat([torch.arange(c_new), torch.randint(0, c_new, (c_old - c_new,), generator=g)])
    any_order = any_order[torch.randperm(c_old, generator=g)]  # rows may arrive before their slot is free
    fusion_like = torch.cat([torch.arange(c_new), torch.arange(c_old - c_new)])  # the last classes merged into the first
    for old_to_new, waiting in ((any_order, None), (fusion_like, 0)):
        w = torch.randn(c_old, 4, generator=g)
        ref, _ = reshard_merge(w, [], old_to_new, c_new, None, chunk_rows=2)
        got, _ = reshard_merge(w.clone(), [], old_to_new, c_new, None, chunk_rows=2, in_place=True)
        assert torch.equal(got, ref)
        assert seen[-1].peak == _waiting_peak(old_to_new, 2) < c_new
        assert waiting is None or seen[-1].peak == waiting
    assert _waiting_peak(any_order, 2) > 0  # the first map does make rows wait


def test_reshard_rejects_a_map_that_is_not_onto():
    w = torch.randn(4, 3)
    with pytest.raises(ValueError, match="received no member"):
        reshard_merge(w, [], torch.tensor([0, 0, 2, 2]), 3, None)
    with pytest.raises(ValueError, match=r"local weight has 4 rows"):
        reshard_merge(w, [], torch.tensor([0, 1, 2, 2, 1]), 3, None)


def test_loss_after_fusion_equals_loss_from_scratch(runs, problems):
    problem = problems[0]
    C_new = int(problem["expected"].max()) + 1
    ref_w, (ref_m,) = reference_merge(problem["weight"], [problem["momentum"]], problem["expected"], C_new)
    head = PartialFCHead(C_new, D, margin=ArcFace(), group=None)
    head.reset_classes(C_new, ref_w, ref_m)
    head.eval()
    with torch.no_grad():
        ref = float(head(problem["emb"], problem["expected"][problem["labels"]]))
    # and the plain formula: s * cos against the normalised merged proxies, margin on the target
    logits = F.normalize(problem["emb"], dim=1) @ F.normalize(ref_w, dim=1).T
    target = problem["expected"][problem["labels"]]
    plain = F.cross_entropy(ArcFace()(logits, target), target)
    assert ref == pytest.approx(float(plain), rel=1e-5)
    for world in (1, 2, 4):
        losses = [r["loss"] for r in runs[world]]
        assert losses == pytest.approx([ref] * world, rel=1e-5)


def test_report_json_and_png(runs):
    import os
    d = runs["report_dir"]
    with open(os.path.join(d, "fusion_report.json")) as f:
        rep = json.load(f)
    assert rep["settings"]["world_size"] == 2 and rep["settings"]["t1"] == T1
    assert rep["stats"]["num_components_merged"] == len(PLANTED)
    assert {tuple(m["source_class"] for m in c["members"]) for c in rep["merged"]} == \
        {tuple(sorted(g)) for g in PLANTED}
    first = next(c for c in rep["merged"] if c["members"][0]["source_class"] == 12)
    assert [(m["dataset"], m["local_label"]) for m in first["members"]] == [("alpha", 12), ("beta", 12),
                                                                           ("gamma", 12)]
    assert all(c > 0.9 for _, _, c in first["pairwise_cos"])
    assert rep["merged_per_dataset_pair"] == {"alpha+beta": 4, "alpha+gamma": 3, "beta+gamma": 3}
    assert rep["largest"][0]["size"] == 3
    top = rep["top1_other_dataset"]
    assert top["count"] == sum(COUNTS) and top["censored"] == 0
    assert top["above_t1"] == sum(len(g) for g in PLANTED)
    with open(os.path.join(d, "fusion_top1_hist.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


# ---- components: pure functions, one process ----------------------------------------------

def plan_of(edges, table, **kw):
    pairs = np.array([e[:2] for e in edges], dtype=np.int64).reshape(-1, 2)
    cos = np.array([e[2] for e in edges], dtype=np.float32)
    return build_plan(pairs, cos, class_dataset=np.asarray(table, dtype=np.int64), **kw)


def test_max_component_leaves_large_components_unmerged():
    table = [0, 1, 2, 3, 0, 1]
    edges = [(0, 1, 0.9), (1, 2, 0.9), (2, 3, 0.9), (4, 5, 0.8)]
    plan = plan_of(edges, table, max_component=3)
    assert [c.members for c in plan.components] == [[4, 5]]
    assert [(r.members, r.reasons) for r in plan.rejected] == [([0, 1, 2, 3], ["too_large"])]
    assert plan.old_to_new.tolist() == [0, 1, 2, 3, 4, 4] and plan.num_classes_new == 5
    assert plan_of(edges, table, max_component=4).num_classes_new == 2


def test_same_dataset_chain_policies():
    # 0 (ds0) - 1 (ds1) - 2 (ds0), plus 1 - 3 (ds2): classes 0 and 2 are one dataset
    table = [0, 1, 0, 2, 1]
    edges = [(0, 1, 0.95), (1, 2, 0.85), (1, 3, 0.8)]
    skip = plan_of(edges, table, same_dataset_policy="skip")
    assert skip.components == [] and skip.rejected[0].reasons == ["same_dataset"]
    assert skip.old_to_new.tolist() == [0, 1, 2, 3, 4]
    split = plan_of(edges, table, same_dataset_policy="split")
    assert [c.members for c in split.components] == [[0, 1, 3]]
    assert split.refused_edges == [(1, 2, pytest.approx(0.85))]
    assert split.old_to_new.tolist() == [0, 0, 1, 0, 2]
    keep = plan_of(edges, table, same_dataset_policy="keep")
    assert [c.members for c in keep.components] == [[0, 1, 2, 3]]
    assert keep.stats["num_merged_with_same_dataset"] == 1
    # allow_same_dataset: the policy is not applied
    assert plan_of(edges, table, same_dataset_policy="skip", allow_same_dataset=True).num_classes_new == 2
    with pytest.raises(ValueError, match="unknown same_dataset_policy 'merge'"):
        plan_of(edges, table, same_dataset_policy="merge")


def test_candidate_pairs_respect_threshold_and_datasets():
    sims = torch.tensor([[0.95, 0.8, 0.6], [0.9, 0.71, float("-inf")]])
    ids = torch.tensor([[3, 4, 5], [2, 3, -1]])
    table = [0, 0, 0, 1, 0, 1]
    pairs, cos = candidate_pairs(sims, ids, 1, table, 0.7)  # queries are classes 1 and 2
    assert sorted(map(tuple, pairs.tolist())) == [(1, 3), (2, 3)]
    pairs, _ = candidate_pairs(sims, ids, 1, table, 0.7, allow_same_dataset=True)
    assert sorted(map(tuple, pairs.tolist())) == [(1, 3), (1, 4), (2, 3)]  # (2, 2) never
    p, c = dedupe_pairs(np.array([[1, 3], [1, 3], [0, 2]]), np.array([0.8, 0.9, 0.7]))
    assert p.tolist() == [[0, 2], [1, 3]] and c.tolist() == pytest.approx([0.7, 0.9])


@pytest.mark.parametrize("policy", ["skip", "split", "keep"])
def test_plan_does_not_depend_on_pair_order(policy):
    rng = random.Random(0)
    C = 60
    table = [c % 4 for c in range(C)]
    edges = []
    for _ in range(80):
        a, b = rng.sample(range(C), 2)
        edges.append((min(a, b), max(a, b), round(rng.uniform(0.71, 0.99), 3)))
    ref = plan_of(edges, table, same_dataset_policy=policy, max_component=5)
    for seed in range(3):
        shuffled = edges + [(b, a, c) for a, b, c in edges[:10]]  # repeats, reversed, reordered
        shuffled = [(min(a, b), max(a, b), c) for a, b, c in shuffled]
        random.Random(seed).shuffle(shuffled)
        got = plan_of(shuffled, table, same_dataset_policy=policy, max_component=5)
        assert np.array_equal(got.old_to_new, ref.old_to_new)
        assert got.components == ref.components and got.refused_edges == ref.refused_edges
        assert [(r.members, r.reasons) for r in got.rejected] == [(r.members, r.reasons) for r in ref.rejected]


def test_new_ids_follow_smallest_source_class_on_a_second_fusion():
    # 6 source classes already fused into 4: f0={0,3}, f1={1}, f2={2,5}, f3={4}
    label_map = np.array([0, 1, 2, 0, 3, 2])
    assert min_source_class(label_map, 4).tolist() == [0, 1, 2, 4]
    table = [0, 1, 2, 0]
    plan = plan_of([(1, 3, 0.9)], table, label_map=label_map)
    assert plan.old_to_new.tolist() == [0, 1, 2, 1] and plan.num_classes_new == 3
    assert plan.new_class_dataset.tolist() == [0, 1, 2]
    assert (plan.old_to_new[label_map]).tolist() == [0, 1, 2, 0, 1, 2]


def test_run_fusion_checks_the_shard_shape():
    with pytest.raises(ValueError, match=r"local_weight has shape \(4, 3\), expected \[5, D\]"):
        run_fusion(torch.randn(4, 3), [], class_dataset=torch.zeros(5, dtype=torch.int64), label_map=None,
                   source_info=None, config=FusionConfig(t1=0.7))


def test_label_space_derives_the_fused_datasets_fusion_computes(problems):
    """The trainer no longer stores the fused class -> dataset table: the label space derives it from
    the label map, and it must equal the table fusion builds, after a first and a second fusion."""
    from fftrain.data.label_space import LabelSpace

    prob = problems[0]
    first = run_fusion(prob["weight"], [], class_dataset=prob["class_dataset"], label_map=None, source_info=None,
                       config=FusionConfig(t1=T1))
    space = LabelSpace(prob["class_dataset"])
    space.swap_label_map(first.new_label_map)
    assert torch.equal(space.fused_dataset, first.new_class_dataset)
    # a second fusion: plant one more duplicate among the fused proxies (source 250 of gamma = source 44 of alpha)
    weight = first.new_local_weight.clone()
    a, b = int(first.new_label_map[44]), int(first.new_label_map[250])
    weight[b] = weight[a]
    second = run_fusion(weight, [], class_dataset=space.fused_dataset, label_map=first.new_label_map, source_info=None,
                        config=FusionConfig(t1=T1))
    space.swap_label_map(second.new_label_map)
    assert second.num_classes_new == first.num_classes_new - 1
    assert int(second.new_label_map[44]) == int(second.new_label_map[250])
    assert torch.equal(space.fused_dataset, second.new_class_dataset)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_auto_t1_finds_the_valley_and_merges_the_planted_duplicates(runs, problems, world):
    fixed, auto = runs[world][0]["fusion"], runs[world][0]["auto"]
    assert auto.threshold.mode == "valley" and 0.5 <= auto.threshold.t1 <= 0.95
    assert auto.threshold.precision > 0.99 and auto.threshold.recall > 0.99
    assert torch.equal(auto.new_label_map, fixed.new_label_map)
    assert fixed.threshold.mode == "fixed" and fixed.threshold.t1 == T1
    assert all(r["auto"].threshold == auto.threshold for r in runs[world])  # one decision on every rank


@pytest.mark.parametrize("world", [1, 2, 4])
def test_mutual_nn_merges_a_subset_of_the_planted_duplicates(runs, problems, world):
    mutual, fixed = runs[world][0]["mutual"], runs[world][0]["fusion"]
    merged = {tuple(c.members) for c in mutual.components}
    planted_pairs = {g for g in PLANTED if len(g) == 2}
    assert planted_pairs <= merged  # a pair of duplicates is each other's top-1
    assert all(set(c) <= set(g) for c in merged for g in PLANTED if c[0] in g)
    assert len(mutual.components) == len(fixed.components)
    assert torch.equal(mutual.new_label_map, runs[1][0]["mutual"].new_label_map)


def test_auto_t1_without_duplicates_merges_nothing_and_reports_why(tmp_path):
    g = torch.Generator().manual_seed(5)
    C = sum(COUNTS)
    weight = F.normalize(torch.randn(C, D, generator=g), dim=1)
    class_dataset = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
    res = run_fusion(weight, [], class_dataset=class_dataset, label_map=None,
                     source_info=SourceInfo.from_counts(NAMES, COUNTS), config=FusionConfig(t1="auto", knn_k=8),
                     report_dir=str(tmp_path))
    assert not res.threshold.merges and res.num_classes_new == C and not res.components
    assert torch.equal(res.new_label_map, torch.arange(C))
    report = json.loads(open(res.report_paths["json"]).read())
    assert report["settings"]["t1"] is None and report["settings"]["t1_config"] == "auto"
    assert report["settings"]["threshold"]["mode"] == "no_valley" and report["settings"]["threshold"]["reason"]
