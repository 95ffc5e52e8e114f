"""Exact top-k inner-product search: one normaliser, one backend choice, one fallback policy.

    unit = unit_rows(x)                                          # float32 rows of L2 norm 1 (F.normalize)
    sims, ids = top_k(unit_queries, unit_keys, k=10)             # cosines [Q, k], key rows [Q, k]
    sims, ids = top_k(unit, unit, 10, self_keys=True, query_groups=g, key_groups=g)   # a kNN graph across groups

Inner product is the score: pass unit rows (`unit_rows`) and it is the cosine. The search is exact
and always returns k columns, best first; where fewer than k neighbours exist the tail is id -1 with
similarity -inf. Among equal similarities the smaller id comes first (within what the backend
returned). `self_keys`: the keys are the queries themselves (row i of both is one item), and a
query's own row is never its neighbour. With `query_groups` / `key_groups` (int64 tables), a query
gets no neighbour of its own group.

Backends (`resolve_backend`, the one fallback policy): 'faiss' (GpuIndexFlatIP when the rows are on
CUDA and faiss-gpu is installed, otherwise faiss-cpu's brute-force `faiss.knn` on host rows, the search
IndexFlatIP runs without its copy of the keys), 'torch' (matmul +
topk in blocks of queries, so a score block stays under `max_block_elems`; None: a quarter of the
free memory, CUDA's cudaMemGetInfo or the CPU's MemAvailable, see `block_elems_for`), 'auto' (CUDA:
faiss-gpu if installed, else torch; CPU: faiss if importable, else torch). All backends give the same
neighbours up to ties and float rounding. faiss is imported inside the functions that use it.

`fftrain.fusion.knn.distributed_knn` runs the same per-block search over class proxies sharded across
ranks, one bounded chunk of a shard against one bounded block of queries at a time.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fftrain.config import KNN_BACKENDS as BACKENDS
from fftrain.config import KNN_PRECISIONS as PRECISIONS
DEFAULT_MAX_BLOCK_ELEMS = 1 << 25  # torch backend: 32M scores (128 MiB fp32) per block
BLOCK_MEMORY_FRACTION = 0.25       # of the free memory, for one score block and its top-k temporaries
_BYTES_PER_SCORE = 12              # the fp32 score, the mask/where copy, topk's workspace


def unit_rows(x, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows cast to `dtype`, then scaled to unit L2 norm (torch's F.normalize: zero rows stay zero), on
    x's device. A numpy array comes back as a torch tensor; `.numpy()` for numpy."""
    rows = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    return F.normalize(rows.to(dtype), dim=1)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory where the scores are computed: cudaMemGetInfo on CUDA, MemAvailable on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(DEFAULT_MAX_BLOCK_ELEMS * _BYTES_PER_SCORE / BLOCK_MEMORY_FRACTION)  # unknown: the fixed default


def block_elems_for(free_bytes: int, n_keys: int) -> int:
    """Scores per block: a fixed share of the free memory, at least one query row against all keys,
    at most 2^31 (topk's index limit)."""
    elems = int(free_bytes * BLOCK_MEMORY_FRACTION) // _BYTES_PER_SCORE
    return max(max(1, n_keys), min(elems, 1 << 31))


def _faiss_module():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_gpu_ok(faiss) -> bool:
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """'faiss-gpu', 'faiss-cpu' or 'torch': what `backend` means for rows on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; available: {list(BACKENDS)}")
    if backend == "torch":
        return "torch"
    faiss = _faiss_module()
    if backend == "faiss" and faiss is None:
        raise RuntimeError("kNN backend 'faiss' requested but faiss is not importable; "
                           "pip install faiss-cpu (or faiss-gpu-cu12), or use backend='torch'")
    if device.type == "cuda":
        if _faiss_gpu_ok(faiss):
            return "faiss-gpu"
        if faiss is not None:
            warnings.warn("faiss has no GPU support here (faiss-cpu and faiss-gpu install into one `faiss` "
                          "package: with both installed the GPU classes vanish); pip uninstall faiss-cpu, then "
                          "reinstall faiss-gpu-cu12. Using " + ("faiss-cpu" if backend == "faiss" else "torch"),
                          stacklevel=2)
        return "faiss-cpu" if backend == "faiss" else "torch"
    return "faiss-cpu" if faiss is not None else "torch"


FAISS_CPU_BLAS_BLOCK = (512, 4096)
"""faiss-cpu's BLAS block (queries, keys) while a `block_searcher` runs: an 8 MiB fp32 score block, as
faiss's default (4096 x 1024) touches at 2048 queries, but a key chunk's 4096 keys in one pass per heap:
~6 % more of the GEMM rate (benchmarks/RESULTS.md, "Fusion")."""


@contextlib.contextmanager
def _faiss_settings(faiss, n: int):
    """Run faiss with `n` OpenMP threads (torch's count: ranks sharing a host must not oversubscribe)
    and `FAISS_CPU_BLAS_BLOCK`; both are faiss globals, put back on exit."""
    cvar = faiss.cvar
    old = (faiss.omp_get_max_threads(), cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs)
    faiss.omp_set_num_threads(max(1, n))
    cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = FAISS_CPU_BLAS_BLOCK
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old[0])
        cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = old[1:]


def merge_topk(best_s: torch.Tensor, best_i: torch.Tensor, cand_s: torch.Tensor, cand_i: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the union of two candidate lists per row; ties go to the smaller id, -1 ids last."""
    s = torch.cat([best_s, cand_s], dim=1)
    i = torch.cat([best_i, cand_i], dim=1)
    if s.dtype == torch.float32 and i.numel() and int(i.max()) < PACKED_ID_LIMIT:
        return unpack_hits(top_packed(pack_hits(s, i), k))
    return top_by_sorts(s, i, k)


def top_by_sorts(s: torch.Tensor, i: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`merge_topk`'s order by two stable sorts (any ids): -1 ids as -inf and last, then score descending,
    then id ascending."""
    s = torch.where(i < 0, torch.full_like(s, float("-inf")), s)
    id_key = torch.where(i < 0, torch.full_like(i, torch.iinfo(torch.int64).max), i)
    order = torch.argsort(id_key, dim=1, stable=True)
    s, i = s.gather(1, order), i.gather(1, order)
    order = torch.argsort(s, dim=1, descending=True, stable=True)[:, :k]
    return s.gather(1, order), i.gather(1, order)


PACKED_ID_LIMIT = 1 << 31
"""Ids below this pack with their fp32 score into one int64 (`pack_hits`)."""
PACKED_NONE = torch.iinfo(torch.int64).min
"""The packed value of a missing hit (id -1, similarity -inf): below every real hit."""


def pack_hits(sims: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """One int64 per hit that orders as `merge_topk` does: the fp32 score's bits made monotonic in the
    high half (IEEE order, -0.0 read as +0.0), the id reversed in the low half (the smaller id first),
    a missing hit (id < 0) below everything. Ids must be below `PACKED_ID_LIMIT`. The running top-k of a
    kNN kept this way is 8 bytes a hit instead of 12, and merging is one topk."""
    bits = (sims.float() + 0.0).view(torch.int32)
    monotonic = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)
    keys = (monotonic << 32) | (PACKED_ID_LIMIT - 1 - ids)
    return torch.where(ids < 0, torch.full_like(keys, PACKED_NONE), keys)


def unpack_hits(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sims float32, ids int64) of packed hits; missing ones are -inf / -1."""
    monotonic = (keys >> 32).to(torch.int32)
    sims = (monotonic ^ ((monotonic >> 31) & 0x7FFFFFFF)).view(torch.float32)
    ids = PACKED_ID_LIMIT - 1 - (keys & 0xFFFFFFFF)
    none = keys == PACKED_NONE
    return sims.masked_fill(none, float("-inf")), ids.masked_fill(none, -1)


def top_packed(keys: torch.Tensor, k: int) -> torch.Tensor:
    """The best k packed hits of each row, best first."""
    return torch.topk(keys, k, dim=1).values


def best_hits(sims: torch.Tensor, ids: torch.Tensor, k: int,
              exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The best k hits of each row, the query's own id (`exclude` [Q], when given) left out: a search
    asked for one hit more than k, so a row whose own id was not returned (ties, an approximate index)
    drops its last hit instead."""
    if exclude is not None:
        sims = torch.where(ids == exclude[:, None], torch.full_like(sims, float("-inf")), sims)
    ids = torch.where(torch.isneginf(sims), torch.full_like(ids, -1), ids)
    return merge_topk(*_empty(len(ids), k, sims), sims, ids, k)


def _empty(n_q: int, k: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return like.new_full((n_q, k), float("-inf")), torch.full((n_q, k), -1, dtype=torch.int64, device=like.device)


def resolve_precision(precision: str, kind: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the torch backend's score matmul (None: exact fp32). 'auto' is bf16 on CUDA with the
    torch backend (tensor cores), fp32 elsewhere (a CPU's bf16 matmul is no faster); faiss is fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown kNN precision {precision!r}; available: {list(PRECISIONS)}")
    if kind != "torch" or precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def candidates_for(k: int, n_keys: int) -> int:
    """Candidates a reduced-precision search keeps per query before the fp32 re-score: room for the
    top k to reorder within the low-precision error."""
    return min(n_keys, 2 * k + 8)


def _search_torch(queries, q_groups, keys, key_offset, k_groups, k, max_block_elems, self_offset, low=None):
    """Top-min(k, n_keys) of queries against keys: (sims, global ids), masked entries -> -1. self_offset:
    the global id of query row 0 when the queries are among the keys (its own key is masked), else None.
    low: a dtype for the score matmul (bf16); its best candidates are then re-scored exactly in fp32."""
    n_q, n_k = queries.shape[0], keys.shape[0]
    kk = min(k, n_k)
    out_s, out_i = _empty(n_q, kk, queries)
    if n_q == 0 or kk == 0:
        return out_s, out_i
    wide = candidates_for(kk, n_k) if low is not None else kk
    chunk = max(1, max_block_elems // max(1, n_k))
    if low is not None:  # the re-score gathers [chunk, wide, D] key rows: bounded like a score block
        chunk = max(1, min(chunk, max_block_elems // (wide * keys.shape[1])))
    low_keys = keys.to(low) if low is not None else None
    for a in range(0, n_q, chunk):
        b = min(n_q, a + chunk)
        block = queries[a:b] @ keys.T if low is None else (queries[a:b].to(low) @ low_keys.T).float()
        if k_groups is not None:
            block.masked_fill_(q_groups[a:b, None] == k_groups[None, :], float("-inf"))
        elif self_offset is not None:  # query a + i is key self_offset - key_offset + a + i: drop the self-match
            block.diagonal(offset=self_offset - key_offset + a).fill_(float("-inf"))
        s, j = torch.topk(block, wide, dim=1)
        if low is not None:
            s, j = _rescore(queries[a:b], keys, s, j, kk)
        out_s[a:b] = s
        out_i[a:b] = torch.where(torch.isneginf(s), torch.full_like(j, -1), j + key_offset)
    return out_s, out_i


def _rescore(queries, keys, low_s, j, k):
    """The exact fp32 inner products of the candidates `j` (masked ones stay -inf), best k of them."""
    exact = torch.einsum("qd,qcd->qc", queries, keys[j])
    exact = torch.where(torch.isneginf(low_s), torch.full_like(exact, float("-inf")), exact)
    s, pick = torch.topk(exact, k, dim=1)
    return s, j.gather(1, pick)


def _faiss_gpu_index(faiss, dim: int, device: torch.device, res):
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = device.index if device.index is not None else torch.cuda.current_device()
    return faiss.GpuIndexFlatIP(res, dim, cfg)


def _search_faiss(faiss, res, queries, keys, k):
    """faiss top-min(k, n_keys): (sims, local key ids) as torch tensors on the queries' device."""
    n_q, n_k = queries.shape[0], keys.shape[0]
    kk = min(k, n_k)
    if n_q == 0 or kk == 0:
        return _empty(n_q, kk, queries)
    if res is None:  # faiss-cpu: its brute-force kNN on numpy views, no index (no copy of the keys)
        d, i = faiss.knn(_host_rows(queries), _host_rows(keys), kk, metric=faiss.METRIC_INNER_PRODUCT)
        d, i = torch.from_numpy(d).to(queries.device), torch.from_numpy(i).to(queries.device)
    else:  # faiss-gpu with faiss.contrib.torch_utils: torch CUDA tensors in and out
        index = _faiss_gpu_index(faiss, keys.shape[1], queries.device, res)
        index.add(keys.contiguous())
        d, i = index.search(queries.contiguous(), kk)
    i = i.to(torch.int64)
    d = torch.where(i < 0, torch.full_like(d, float("-inf")), d)
    return d, i


def _host_rows(rows: torch.Tensor) -> np.ndarray:
    """Contiguous fp32 rows as a numpy array (a view of a contiguous CPU tensor, else a copy)."""
    return rows.detach().cpu().contiguous().numpy()


def group_runs(groups: torch.Tensor) -> list[tuple[int, int, int]]:
    """(start, end, group) of each run of equal consecutive values."""
    n = groups.numel()
    if n == 0:
        return []
    starts = [0] + (torch.nonzero(groups[1:] != groups[:-1]).flatten() + 1).tolist()
    ends = starts[1:] + [n]
    return list(zip(starts, ends, groups[starts].tolist()))


def _other_group_ranges(q_runs, g) -> list[tuple[int, int]]:
    """The maximal ranges of query rows whose group is not g, from the queries' runs."""
    ranges = []
    for a, b, qg in q_runs:
        if qg == g:
            continue
        if ranges and ranges[-1][1] == a:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
    return ranges


MAX_RUNS = 16
"""Groups in at most this many runs (a label space laid out dataset after dataset) are searched as
rectangles of contiguous rows; more runs (interleaved groups) go through per-group gathers."""


def _search_faiss_block(faiss, res, queries, q_groups, keys, key_offset, k_groups, k, self_offset):
    """faiss search of the queries against one block of keys, self (query row i is global id
    self_offset + i, when not None) and same-group excluded; global ids."""
    n_q = queries.shape[0]
    kk = min(k, keys.shape[0])
    if n_q == 0 or kk == 0:
        return _empty(n_q, kk, queries)
    if k_groups is None:
        # self keys: one extra neighbour, then drop the query itself by id (the self-match is
        # not always first: exact duplicates tie with it)
        s, j = _search_faiss(faiss, res, queries, keys, k if self_offset is None else k + 1)
        gid = torch.where(j < 0, j, j + key_offset)
        own = None if self_offset is None else torch.arange(n_q, device=queries.device) + self_offset
        return best_hits(s, gid, kk, own)
    k_runs, q_runs = group_runs(k_groups), group_runs(q_groups)
    if len(k_runs) > MAX_RUNS or len(q_runs) > MAX_RUNS:
        return _search_faiss_gathered(faiss, res, queries, q_groups, keys, key_offset, k_groups, kk)
    # one search per rectangle (a run of one group's keys, a range of queries of other groups), all
    # views: the candidates of each key run in their own columns, merged by the caller
    cand_s, cand_i = _empty(n_q, kk * len(k_runs), queries)
    for r, (ka, kb, g) in enumerate(k_runs):
        for qa, qb in _other_group_ranges(q_runs, g):
            s, j = _search_faiss(faiss, res, queries[qa:qb], keys[ka:kb], kk)
            cols = slice(r * kk, r * kk + s.shape[1])
            cand_s[qa:qb, cols] = s
            cand_i[qa:qb, cols] = torch.where(j < 0, j, j + key_offset + ka)
    return cand_s, cand_i


def _search_faiss_gathered(faiss, res, queries, q_groups, keys, key_offset, k_groups, kk):
    """Groups interleaved: one sub-index per group present in the block, searched by the queries
    of the other groups (gathered copies)."""
    best_s, best_i = _empty(queries.shape[0], kk, queries)
    for g in torch.unique(k_groups).tolist():
        key_rows = torch.nonzero(k_groups == g).flatten()
        q_rows = torch.nonzero(q_groups != g).flatten()
        if q_rows.numel() == 0:
            continue
        s, j = _search_faiss(faiss, res, queries[q_rows], keys[key_rows], kk)
        gid = torch.where(j < 0, j, key_rows[j.clamp(min=0)] + key_offset)
        best_s[q_rows], best_i[q_rows] = merge_topk(best_s[q_rows], best_i[q_rows], s, gid, kk)
    return best_s, best_i


#: search(queries, keys, k, *, key_offset, self_keys, query_offset, query_groups, key_groups) -> (sims, global ids):
#: the block's candidates, its top k among them (a block of several groups may return k per group); merge them
BlockSearch = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]


def _search_block(kind, faiss, res, max_block_elems, low, queries, keys, k, *, key_offset=0, self_keys=False,
                  query_offset=None, query_groups=None, key_groups=None):
    """self_keys: the keys are the queries (global ids from key_offset). query_offset: the queries are the
    rows of global ids [query_offset, query_offset + Q) and a key of the same id is their own (one block
    of queries against one block of keys of the same rows; None: no query is among the keys)."""
    self_offset = key_offset if self_keys else query_offset
    if self_offset is not None and not (key_offset - queries.shape[0] < self_offset < key_offset + keys.shape[0]):
        self_offset = None  # the blocks do not overlap: no query meets its own row here
    if kind == "torch":
        block = max_block_elems or block_elems_for(free_memory_bytes(queries.device), keys.shape[0])
        return _search_torch(queries, query_groups, keys, key_offset, key_groups, k, block, self_offset, low)
    return _search_faiss_block(faiss, res, queries, query_groups, keys, key_offset, key_groups, k, self_offset)


@contextlib.contextmanager
def block_searcher(backend: str, device: torch.device, max_block_elems: int | None = None,
                   precision: str = "fp32") -> Iterator[BlockSearch]:
    """The search of one block of keys with `backend` (resolved for `device`) at `precision`
    (`resolve_precision`), its faiss resources made once for all the blocks searched inside the `with`."""
    kind = resolve_backend(backend, device)
    low = resolve_precision(precision, kind, device)
    faiss = res = None
    if kind.startswith("faiss"):
        faiss = _faiss_module()
        if kind == "faiss-gpu":
            import faiss.contrib.torch_utils  # noqa: F401  (lets GPU indexes take torch tensors)
            res = faiss.StandardGpuResources()
    settings = _faiss_settings(faiss, torch.get_num_threads()) if faiss is not None else contextlib.nullcontext()
    with settings:
        yield functools.partial(_search_block, kind, faiss, res, max_block_elems, low)


def as_rows(x, name: str) -> torch.Tensor:
    """x as a contiguous float32 [n, D] tensor, detached (a numpy array is shared, not copied, when it can be)."""
    rows = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if rows.dim() != 2:
        raise ValueError(f"{name} must be [n, D], got shape {tuple(rows.shape)}")
    return (rows if rows.dtype == torch.float32 else rows.float()).contiguous()


def top_k(queries, keys, k: int, *, backend: str = "auto", self_keys: bool = False, query_groups=None,
          key_groups=None, max_block_elems: int | None = None,
          precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner-product neighbours of each query row among the key rows, in one process
    (`precision` 'bf16': bf16 scores, the candidates re-scored in fp32; see `resolve_precision`).

    queries [Q, D], keys [C, D] (torch or numpy; unit rows for cosine), k >= 1. Returns (sims [Q, k]
    float32, ids [Q, k] int64 key rows), best first, on the queries' device; see the module for the rest.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if self_keys and keys is not queries:
        raise ValueError("self_keys: the keys are the queries; pass the same object twice")
    q = as_rows(queries, "queries")
    keys = q if self_keys else as_rows(keys, "keys").to(q.device)
    if keys.shape[0] and keys.shape[1] != q.shape[1]:
        raise ValueError(f"keys have dimension {keys.shape[1]}, queries {q.shape[1]}")
    if (query_groups is None) != (key_groups is None):
        raise ValueError("query_groups and key_groups go together")
    groups = {}
    if query_groups is not None:
        groups = {"query_groups": torch.as_tensor(query_groups, dtype=torch.int64).to(q.device),
                  "key_groups": torch.as_tensor(key_groups, dtype=torch.int64).to(q.device)}
    with block_searcher(backend, q.device, max_block_elems, precision) as search:
        s, i = search(q, keys, k, self_keys=self_keys, **groups)
    return merge_topk(*_empty(q.shape[0], k, q), s, i, k)
