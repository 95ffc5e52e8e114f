"""Distributed exact k-nearest-neighbour search over class proxies sharded across ranks.

    sims, ids = distributed_knn(proxies, k=10, group=ctx.group)             # all ranks, collectively
    sims, ids = distributed_knn(proxies, 10, None, groups=class_dataset)    # one process, cross-dataset only

Each rank holds a contiguous block of the rows (rank r: rows [offset_r, offset_r + n_r), the
rank-order concatenation, which is the fused class id under `class_sharding.shard_range`). The
ranks first exchange their row counts (shards may differ in size), then every rank broadcasts
its shard in turn; each rank searches its own rows against the shard in hand and folds the hits
into a running top-k. A rank therefore holds its own shard plus one remote shard at a time, never
all C rows. Inner product is the score: pass L2-normalised rows and it is the cosine.

Self-matches are excluded by id. With `groups` (a global [C] int64 table, e.g. the dataset of
each class), a query only gets neighbours from other groups; the search is still exact (faiss
searches one sub-index per group of the shard in hand; torch masks the score block).

Backends: 'faiss' (IndexFlatIP; GpuIndexFlatIP when the rows are on CUDA and faiss-gpu is
installed, otherwise faiss-cpu on a host copy), 'torch' (matmul + topk, chunked over the queries
so a score block stays under `max_block_elems`; None: a quarter of the free memory, CUDA's
cudaMemGetInfo or the CPU's MemAvailable, see `block_elems_for`), 'auto' (CUDA: faiss-gpu if installed, else
torch; CPU: faiss if importable, else torch). All backends give the same neighbours up to ties.
Where fewer than k neighbours exist, the tail is id -1 with similarity -inf. Among equal
similarities, the smaller id comes first (within what the backend returned).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from fftrain.config import KNN_BACKENDS as BACKENDS
from fftrain.distributed import ProcessGroup, all_gather_list, broadcast_, comm_device, rank_of, world_size_of

DEFAULT_MAX_BLOCK_ELEMS = 1 << 25  # torch backend: 32M scores (128 MiB fp32) per block
BLOCK_MEMORY_FRACTION = 0.25       # of the free memory, for one score block and its top-k temporaries
_BYTES_PER_SCORE = 12              # the fp32 score, the mask/where copy, topk's workspace


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


def gather_sizes(n_local: int, group: ProcessGroup | None, device: torch.device | None = None) -> list[int]:
    """Every rank's row count, in rank order."""
    if group is None or world_size_of(group) == 1:
        return [int(n_local)]
    t = torch.tensor([int(n_local)], dtype=torch.int64, device=comm_device(group, device or "cpu"))
    parts = all_gather_list(t, group)
    return [int(p.item()) for p in parts]


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


@contextlib.contextmanager
def _faiss_threads(faiss, n: int):
    """Run faiss with `n` OpenMP threads (torch's count: ranks sharing a host must not oversubscribe)."""
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def merge_topk(best_s: torch.Tensor, best_i: torch.Tensor, cand_s: torch.Tensor, cand_i: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the union of two candidate lists per row; ties go to the smaller id, -1 ids last."""
    s = torch.cat([best_s, cand_s], dim=1)
    i = torch.cat([best_i, cand_i], dim=1)
    s = torch.where(i < 0, torch.full_like(s, float("-inf")), s)
    # stable sort by id (with -1 mapped past every real id), then stable sort by score, descending
    id_key = torch.where(i < 0, torch.full_like(i, torch.iinfo(torch.int64).max), i)
    order = torch.argsort(id_key, dim=1, stable=True)
    s, i = s.gather(1, order), i.gather(1, order)
    order = torch.argsort(s, dim=1, descending=True, stable=True)[:, :k]
    return s.gather(1, order), i.gather(1, order)


def _search_torch(queries, q_groups, keys, key_offset, k_groups, k, max_block_elems, own_shard):
    """Top-min(k, n_keys) of queries against keys: (sims, global ids), masked entries -> -1."""
    n_q, n_k = queries.shape[0], keys.shape[0]
    kk = min(k, n_k)
    out_s = queries.new_full((n_q, kk), float("-inf"))
    out_i = torch.full((n_q, kk), -1, dtype=torch.int64, device=queries.device)
    if n_q == 0 or kk == 0:
        return out_s, out_i
    chunk = max(1, max_block_elems // max(1, n_k))
    for a in range(0, n_q, chunk):
        b = min(n_q, a + chunk)
        block = queries[a:b] @ keys.T
        if k_groups is not None:
            block.masked_fill_(q_groups[a:b, None] == k_groups[None, :], float("-inf"))
        elif own_shard:  # query a + i is key a + i: drop the self-match
            block.diagonal(offset=a).fill_(float("-inf"))
        s, j = torch.topk(block, kk, dim=1)
        out_s[a:b] = s
        out_i[a:b] = torch.where(torch.isneginf(s), torch.full_like(j, -1), j + key_offset)
    return out_s, out_i


def _faiss_index(faiss, dim: int, device: torch.device, res):
    if res is None:
        return faiss.IndexFlatIP(dim)
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = device.index if device.index is not None else torch.cuda.current_device()
    return faiss.GpuIndexFlatIP(res, dim, cfg)


def _search_faiss(faiss, res, queries, keys, k):
    """faiss top-min(k, n_keys): (sims, local key ids) as torch tensors on the queries' device."""
    n_q, n_k = queries.shape[0], keys.shape[0]
    kk = min(k, n_k)
    if n_q == 0 or kk == 0:
        return (queries.new_full((n_q, kk), float("-inf")),
                torch.full((n_q, kk), -1, dtype=torch.int64, device=queries.device))
    index = _faiss_index(faiss, keys.shape[1], queries.device, res)
    if res is None:  # faiss-cpu: numpy in and out
        index.add(keys.detach().cpu().contiguous().numpy())
        d, i = index.search(queries.detach().cpu().contiguous().numpy(), kk)
        d, i = torch.from_numpy(d).to(queries.device), torch.from_numpy(i).to(queries.device)
    else:  # faiss-gpu with faiss.contrib.torch_utils: torch CUDA tensors in and out
        index.add(keys.contiguous())
        d, i = index.search(queries.contiguous(), kk)
    i = i.to(torch.int64)
    d = torch.where(i < 0, torch.full_like(d, float("-inf")), d)
    return d, i


def _search_faiss_shard(faiss, res, queries, q_global, q_groups, keys, key_offset, k_groups, k, own_shard):
    """faiss search of the queries against one shard, self/same-group excluded; global ids."""
    n_q = queries.shape[0]
    kk = min(k, keys.shape[0])
    best_s = queries.new_full((n_q, kk), float("-inf"))
    best_i = torch.full((n_q, kk), -1, dtype=torch.int64, device=queries.device)
    if n_q == 0 or kk == 0:
        return best_s, best_i
    if k_groups is None:
        # own shard: one extra neighbour, then drop the query itself by id (the self-match is
        # not always first: exact duplicates tie with it)
        s, j = _search_faiss(faiss, res, queries, keys, k + 1 if own_shard else k)
        gid = torch.where(j < 0, j, j + key_offset)
        s = torch.where(gid == q_global[:, None], torch.full_like(s, float("-inf")), s)
        gid = torch.where(torch.isneginf(s), torch.full_like(gid, -1), gid)
        return merge_topk(best_s, best_i, s, gid, kk)
    # one sub-index per group present in the shard, searched by the queries of the other groups
    for g in torch.unique(k_groups).tolist():
        key_rows = torch.nonzero(k_groups == g).flatten()
        q_rows = torch.nonzero(q_groups != g).flatten()
        if q_rows.numel() == 0:
            continue
        s, j = _search_faiss(faiss, res, queries[q_rows], keys[key_rows], k)
        gid = torch.where(j < 0, j, key_rows[j.clamp(min=0)] + key_offset)
        best_s[q_rows], best_i[q_rows] = merge_topk(best_s[q_rows], best_i[q_rows], s, gid, kk)
    return best_s, best_i


def distributed_knn(local_proxies: torch.Tensor, k: int, group: ProcessGroup | None, *,
                    backend: str = "auto", groups: torch.Tensor | None = None,
                    max_block_elems: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner-product neighbours of this rank's rows among all ranks' rows.

    local_proxies: [n_local, D] float32, this rank's rows (L2-normalised for cosine), in the
      rank-order concatenation of all shards; shards may differ in size (also 0 rows).
    k: neighbours per row (>= 1).
    group: the process group (None: one process). Every rank of it must call.
    groups: optional global [C] int64 table; a query gets no neighbour of its own group.
    Returns (sims [n_local, k] float32, ids [n_local, k] int64 global row ids), best first, on
    the rows' device; missing neighbours are id -1, similarity -inf.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if local_proxies.dim() != 2:
        raise ValueError(f"local_proxies must be [n_local, D], got shape {tuple(local_proxies.shape)}")
    x = local_proxies.detach()
    if x.dtype != torch.float32:
        x = x.float()
    x = x.contiguous()
    device = x.device
    world, rank = world_size_of(group), rank_of(group)
    kind = resolve_backend(backend, device)
    cdev = comm_device(group, device)
    sizes = gather_sizes(x.shape[0], group, cdev)
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    total = offsets[-1]
    n_local = x.shape[0]
    q_global = torch.arange(offsets[rank], offsets[rank] + n_local, device=device)
    if groups is not None:
        groups = torch.as_tensor(groups, dtype=torch.int64).to(device)
        if groups.shape != (total,):
            raise ValueError(f"groups must have shape [{total}] (all rows of all ranks), got {tuple(groups.shape)}")
        q_groups = groups[offsets[rank]:offsets[rank + 1]]
    else:
        q_groups = None

    faiss = res = None
    if kind.startswith("faiss"):
        faiss = _faiss_module()
        if kind == "faiss-gpu":
            import faiss.contrib.torch_utils  # noqa: F401  (lets GPU indexes take torch tensors)
            res = faiss.StandardGpuResources()

    best_s = x.new_full((n_local, k), float("-inf"))
    best_i = torch.full((n_local, k), -1, dtype=torch.int64, device=device)
    threads = _faiss_threads(faiss, torch.get_num_threads()) if faiss is not None else contextlib.nullcontext()
    with threads:
        for src in range(world):
            if sizes[src] == 0:
                continue
            if src == rank:
                keys = x
            else:
                keys = x.new_empty((sizes[src], x.shape[1]))
            if world > 1:
                buf = keys if keys.device == cdev else keys.to(cdev)
                broadcast_(buf, src, group)
                keys = buf.to(device)
            k_groups = groups[offsets[src]:offsets[src + 1]] if groups is not None else None
            if kind == "torch":
                block = max_block_elems or block_elems_for(free_memory_bytes(device), keys.shape[0])
                s, i = _search_torch(x, q_groups, keys, offsets[src], k_groups, k, block, src == rank)
            else:
                s, i = _search_faiss_shard(faiss, res, x, q_global, q_groups, keys, offsets[src], k_groups, k,
                                           src == rank)
            if n_local:
                best_s, best_i = merge_topk(best_s, best_i, s, i, k)
            del keys
    return best_s, best_i
