"""fftrain.search against small reference searches (faiss's flat index called directly, a full torch score
matrix), bit for bit where the backend is the same; and every caller of it (fusion, audit, DAO, pseudo-labels)
giving what its former private search gave: the reference below on the same unit rows."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fftrain.audit.leakage import nearest_centres
from fftrain.evaluation.dao import proxy_topk_similarities
from fftrain.fusion.knn import distributed_knn
from fftrain.pseudo_label.clustering import knn_graph
from fftrain.pseudo_label.separation import max_cosine
from fftrain.pseudo_label.uncertainty import cluster_centres, cluster_margins
from fftrain import search
from fftrain.search import best_hits, resolve_backend, top_k, unit_rows

faiss = pytest.importorskip("faiss")


def _rows(n, d=24, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _faiss_flat(queries: np.ndarray, keys: np.ndarray, k: int):
    """The reference: faiss's exact inner-product index, called the way the callers used to."""
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(np.ascontiguousarray(keys))
    return index.search(np.ascontiguousarray(queries), k)


def _faiss_flat_without_self(x: np.ndarray, k: int):
    """The former kNN graph: k + 1 hits, the row's own removed wherever it is (else the last hit)."""
    sims, ids = _faiss_flat(x, x, min(k + 1, len(x)))
    is_self = ids == np.arange(len(x))[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return sims[~is_self].reshape(len(x), -1)[:, :k], ids[~is_self].reshape(len(x), -1)[:, :k]


def test_unit_rows_is_torchs_normalize_in_float32_by_default():
    x = _rows(50) * 3.0
    x[7] = 0.0
    assert torch.equal(unit_rows(x), F.normalize(torch.from_numpy(x), dim=1))
    assert unit_rows(x.astype(np.float64), torch.float64).dtype == torch.float64
    assert torch.all(unit_rows(x)[7] == 0.0)


def test_faiss_backend_is_faiss_flat_bit_for_bit():
    q, keys = unit_rows(_rows(300, seed=1)), unit_rows(_rows(200, seed=2))
    sims, ids = top_k(q, keys, 7, backend="faiss")
    ref_sims, ref_ids = _faiss_flat(q.numpy(), keys.numpy(), 7)
    assert np.array_equal(sims.numpy(), ref_sims) and np.array_equal(ids.numpy(), ref_ids)


def test_torch_backend_is_the_full_score_matrix_and_in_blocks_the_same_neighbours():
    q, keys = unit_rows(_rows(300, seed=1)), unit_rows(_rows(200, seed=2))
    ref_sims, ref_ids = (q @ keys.T).topk(7, dim=1)
    sims, ids = top_k(q, keys, 7, backend="torch")  # the default block holds all 300 x 200 scores
    assert torch.equal(sims, ref_sims) and torch.equal(ids, ref_ids)
    for rows_per_block in (1, 13, 64):  # BLAS sums a block of another shape in another order: last bits move
        sims, ids = top_k(q, keys, 7, backend="torch", max_block_elems=rows_per_block * 200)
        assert torch.equal(ids, ref_ids) and torch.allclose(sims, ref_sims, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_self_keys_leave_each_row_out_and_groups_keep_to_other_groups(backend):
    x = unit_rows(_rows(120, seed=3))
    sims, ids = top_k(x, x, 6, backend=backend, self_keys=True)
    ref_sims, ref_ids = _faiss_flat_without_self(x.numpy(), 6)
    assert np.array_equal(ids.numpy(), ref_ids)
    if backend == "faiss":
        assert np.array_equal(sims.numpy(), ref_sims)
    np.testing.assert_allclose(sims.numpy(), ref_sims, rtol=0, atol=1e-6)
    x[5] = x[4]  # an exact duplicate ties with the self-match; equal scores go to the smaller id first
    _, ids = top_k(x, x, 6, backend=backend, self_keys=True)
    assert not (ids == torch.arange(120)[:, None]).any() and ids[4, 0] == 5 and ids[5, 0] == 4
    row = ids[2].tolist()
    assert 4 in row and row.index(5) == row.index(4) + 1
    groups = torch.arange(120) % 3
    _, ids = top_k(x, x, 6, backend=backend, self_keys=True, query_groups=groups, key_groups=groups)
    assert (groups[ids] != groups[:, None]).all()


def test_fewer_keys_than_k_pad_with_minus_one_and_minus_infinity():
    sims, ids = top_k(unit_rows(_rows(4)), unit_rows(_rows(2, seed=1)), 5)
    assert ids.shape == (4, 5) and (ids[:, 2:] == -1).all() and torch.isneginf(sims[:, 2:]).all()
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k(unit_rows(_rows(4)), unit_rows(_rows(2)), 0)
    x = unit_rows(_rows(4))
    with pytest.raises(ValueError, match="self_keys: the keys are the queries"):
        top_k(x, x.clone(), 2, self_keys=True)


def test_best_hits_drops_the_own_row_or_else_the_last_hit():
    sims = torch.tensor([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    ids = torch.tensor([[3, 0, 2], [3, 0, 2]])
    s, i = best_hits(sims, ids, 2, torch.tensor([0, 1]))
    assert i.tolist() == [[3, 2], [3, 0]] and s[0].tolist() == pytest.approx([0.9, 0.7])


def test_one_fallback_policy():
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "faiss-cpu"
    with pytest.raises(ValueError, match="unknown kNN backend 'annoy'"):
        resolve_backend("annoy", torch.device("cpu"))


# ---- the callers: what each former private search gave, on the same unit rows ----------------------------

@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_fusion_knn_in_one_process_is_top_k_over_itself(backend):
    x = unit_rows(_rows(150, seed=4))
    groups = torch.arange(150) % 4
    for g in (None, groups):
        got = distributed_knn(x, 8, None, backend=backend, groups=g)
        want = top_k(x, x, 8, backend=backend, self_keys=True, query_groups=g, key_groups=g)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_audit_nearest_centres_is_faiss_flat():
    q, c = unit_rows(_rows(200, seed=5)).numpy(), unit_rows(_rows(40, seed=6)).numpy()
    sims, ids = nearest_centres(q, c, 3)
    ref_sims, ref_ids = _faiss_flat(q, c, 3)
    assert np.array_equal(sims, ref_sims) and np.array_equal(ids, ref_ids) and ids.dtype == np.int64


def test_dao_top_k_is_faiss_flat_on_unit_rows():
    emb, proxies = _rows(200, seed=7), _rows(60, seed=8)
    ref_sims, _ = _faiss_flat(unit_rows(emb).numpy(), unit_rows(proxies).numpy(), 10)
    assert np.array_equal(proxy_topk_similarities(emb, proxies, 10), ref_sims.astype(np.float64))


def test_pseudo_label_max_cosine_is_faiss_flat_on_unit_rows():
    emb, proxies = _rows(300, seed=9), _rows(50, seed=10)
    sims, ids = max_cosine(emb, proxies)
    ref_sims, ref_ids = _faiss_flat(unit_rows(emb).numpy(), unit_rows(proxies).numpy(), 1)
    assert np.array_equal(sims, ref_sims[:, 0].astype(np.float64)) and np.array_equal(ids, ref_ids[:, 0])


def test_pseudo_label_flat_knn_graph_is_faiss_flat_without_self_on_unit_rows():
    emb = _rows(400, seed=11)
    graph = knn_graph(emb, 12, index="flat")
    ref_sims, ref_ids = _faiss_flat_without_self(unit_rows(emb).numpy(), 12)
    assert np.array_equal(graph.sims, ref_sims) and np.array_equal(graph.ids, ref_ids)
    assert knn_graph(emb[:5], 12).ids.shape == (5, 4)


def test_pseudo_label_cluster_margins_search_the_centres_with_faiss_flat():
    emb = _rows(300, seed=12)
    labels = np.random.default_rng(13).integers(-1, 20, 300)
    x = unit_rows(emb).numpy()
    centres = cluster_centres(x, labels)
    keep = labels >= 0
    sims, ids = _faiss_flat(x[keep], centres, 2)
    other = np.where(ids[:, 0] == labels[keep], sims[:, 1], sims[:, 0])
    own = np.einsum("nd,nd->n", x[keep], centres[labels[keep]])
    margins = cluster_margins(emb, labels)
    assert np.array_equal(margins[keep], own - other) and np.isnan(margins[~keep]).all()


def test_bf16_scores_are_rescored_to_the_fp32_neighbours():
    """bf16 candidates re-scored in fp32: the same neighbours and the fp32 similarities, where bf16 scores alone
    are off by more than the re-score's rounding (so the re-score is what makes them equal)."""
    x = unit_rows(_rows(1500, d=128, seed=3))
    exact_s, exact_i = top_k(x, x, 10, backend="torch", self_keys=True)
    fast_s, fast_i = top_k(x, x, 10, backend="torch", self_keys=True, precision="bf16", max_block_elems=1 << 16)
    assert torch.equal(fast_i, exact_i)
    torch.testing.assert_close(fast_s, exact_s, rtol=0, atol=1e-6)
    raw = (x.bfloat16() @ x.bfloat16().T).float().gather(1, exact_i)
    assert (raw - exact_s).abs().max() > 1e-4


def test_bf16_fusion_merges_what_fp32_merges_near_t1():
    """Planted cross-dataset pairs at cosines straddling T1 within bf16's error: the same merge set and the same
    fused rows under both precisions."""
    import dataclasses

    from fftrain.config import FusionConfig
    from fftrain.fusion import plan_fusion

    rng = np.random.default_rng(5)
    base = unit_rows(rng.standard_normal((600, 256)).astype(np.float32))
    noise = unit_rows(rng.standard_normal((600, 256)).astype(np.float32))
    cos = torch.from_numpy(rng.uniform(0.695, 0.705, 600).astype(np.float32))[:, None]
    twin = cos * base + torch.sqrt(1 - cos ** 2) * (noise - (noise * base).sum(1, keepdim=True) * base)
    weight = torch.cat([base, unit_rows(twin)])
    table = torch.cat([torch.zeros(600), torch.ones(600)]).long()
    config = FusionConfig(t1=0.7, backend="torch", knn_precision="fp32")
    exact = plan_fusion(weight, class_dataset=table, label_map=None, config=config)
    fast = plan_fusion(weight, class_dataset=table, label_map=None,
                       config=dataclasses.replace(config, knn_precision="bf16"))
    assert 100 < 1200 - exact.plan.num_classes_new < 500  # pairs on both sides of T1
    assert torch.equal(fast.old_to_new, exact.old_to_new)
    twin_rows = unit_rows(twin)
    raw = ((base.bfloat16().float()) * twin_rows.bfloat16().float()).sum(1)  # what bf16 scores alone would say
    assert ((raw > 0.7) != ((base * twin_rows).sum(1) > 0.7)).sum() > 0


def test_precision_resolves_per_backend_and_device():
    from fftrain.config import ConfigError, FusionConfig
    from fftrain.search import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", "torch", cpu) is None
    assert resolve_precision("auto", "torch", cuda) is torch.bfloat16
    assert resolve_precision("auto", "faiss-gpu", cuda) is None and resolve_precision("bf16", "faiss-cpu", cpu) is None
    assert resolve_precision("bf16", "torch", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown kNN precision"):
        resolve_precision("fp16", "torch", cpu)
    with pytest.raises(ConfigError, match="fusion.knn_precision"):
        FusionConfig(knn_precision="fp16")


def test_packed_hits_order_as_the_two_sorts_and_come_back_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(-3, 4, (200, 30), generator=g).float() / 4  # many ties, zeros, negatives
    s[s == 0.25] = -0.0
    s[:, ::7] = float("-inf")
    s[5] = torch.randn(30, generator=g) * 1e-30                    # subnormals and tiny values
    i = torch.randperm(30 * 200, generator=g).reshape(200, 30) * 1000
    i[:, ::5] = -1
    i[0, 0] = search.PACKED_ID_LIMIT - 1
    got = search.unpack_hits(search.top_packed(search.pack_hits(s, i), 12))
    ref = search.top_by_sorts(s, i, 12)
    assert torch.equal(got[1], ref[1])
    assert torch.equal(got[0].view(torch.int32), (ref[0] + 0.0).view(torch.int32))
    none = search.pack_hits(torch.tensor([[float("-inf")]]), torch.tensor([[-1]]))
    assert int(none) == search.PACKED_NONE and search.unpack_hits(none)[1].item() == -1


def test_merge_topk_past_the_packed_id_limit_keeps_the_same_order():
    s = torch.tensor([[0.5, 0.5, 0.9, float("-inf")]])
    i = torch.tensor([[search.PACKED_ID_LIMIT + 5, 3, search.PACKED_ID_LIMIT + 1, -1]])
    got = search.merge_topk(s[:, :0], i[:, :0], s, i, 4)
    assert got[1].tolist() == [[search.PACKED_ID_LIMIT + 1, 3, search.PACKED_ID_LIMIT + 5, -1]]


@pytest.mark.parametrize("layout", ["datasets in turn", "interleaved"])
def test_grouped_faiss_search_is_the_torch_reference(layout, monkeypatch):
    """Contiguous groups go through rectangles of views, interleaved ones through per-group gathers (and
    so does a contiguous layout when the rectangles are switched off): the same neighbours either way."""
    x = unit_rows(_rows(600, 32, seed=3))
    groups = torch.arange(600) // 200 if layout == "datasets in turn" else torch.arange(600) % 3
    ref = top_k(x, x, 7, backend="torch", self_keys=True, query_groups=groups, key_groups=groups)
    got = distributed_knn(x, 7, None, backend="faiss", groups=groups, chunk_bytes=170 * 4 * 32)
    assert torch.equal(got[1], ref[1])
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-6)
    monkeypatch.setattr(search, "MAX_RUNS", 0)
    gathered = distributed_knn(x, 7, None, backend="faiss", groups=groups, chunk_bytes=170 * 4 * 32)
    assert torch.equal(gathered[1], ref[1])


def test_faiss_block_settings_hold_inside_the_searcher_and_are_put_back():
    cvar = faiss.cvar
    before = (faiss.omp_get_max_threads(), cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs)
    with search.block_searcher("faiss", torch.device("cpu")):
        assert (cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs) == search.FAISS_CPU_BLAS_BLOCK
        assert faiss.omp_get_max_threads() == torch.get_num_threads()
    assert (faiss.omp_get_max_threads(), cvar.distance_compute_blas_query_bs,
            cvar.distance_compute_blas_database_bs) == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fusion_knn_blocks_are_torchs_normalize_bit_for_bit_and_leave_the_shard_alone(dtype):
    """A bf16 block is cast, then normalised in place (no second block); an fp32 block is normalised into
    a new tensor: either way F.normalize's bits, and the shard is not written."""
    from fftrain.fusion.knn import _unit

    x = torch.from_numpy(_rows(300, 64, seed=5)).to(dtype)
    x[7] = 0
    before = x.clone()
    assert torch.equal(_unit(x, True), F.normalize(x.float(), dim=1))
    assert torch.equal(x, before)
