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

The search of each shard, the backends ('auto', 'faiss', 'torch'), the fallback policy and the
order of ties are `fftrain.search`'s: with one process this is `fftrain.search.top_k(x, x, k,
self_keys=True, ...)`. Where fewer than k neighbours exist, the tail is id -1 with similarity -inf.
"""

from __future__ import annotations

import torch

from fftrain.distributed import ProcessGroup, all_gather_list, broadcast_, comm_device, rank_of, world_size_of
from fftrain.search import as_rows, block_searcher, merge_topk, resolve_backend

__all__ = ["distributed_knn", "gather_sizes", "resolve_backend"]  # resolve_backend: fftrain.search's, for run_fusion


def gather_sizes(n_local: int, group: ProcessGroup | None, device: torch.device | None = None) -> list[int]:
    """Every rank's row count, in rank order."""
    if group is None or world_size_of(group) == 1:
        return [int(n_local)]
    t = torch.tensor([int(n_local)], dtype=torch.int64, device=comm_device(group, device or "cpu"))
    parts = all_gather_list(t, group)
    return [int(p.item()) for p in parts]


def distributed_knn(local_proxies: torch.Tensor, k: int, group: ProcessGroup | None, *,
                    backend: str = "auto", groups: torch.Tensor | None = None,
                    max_block_elems: int | None = None, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner-product neighbours of this rank's rows among all ranks' rows.

    local_proxies: [n_local, D] float32, this rank's rows (L2-normalised for cosine), in the
      rank-order concatenation of all shards; shards may differ in size (also 0 rows).
    k: neighbours per row (>= 1).
    group: the process group (None: one process). Every rank of it must call.
    groups: optional global [C] int64 table; a query gets no neighbour of its own group.
    precision: 'fp32', 'bf16' or 'auto' (`fftrain.search.resolve_precision`: bf16 scores re-scored in fp32).
    Returns (sims [n_local, k] float32, ids [n_local, k] int64 global row ids), best first, on
    the rows' device; missing neighbours are id -1, similarity -inf.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = as_rows(local_proxies, "local_proxies")
    device = x.device
    world, rank = world_size_of(group), rank_of(group)
    cdev = comm_device(group, device)
    sizes = gather_sizes(x.shape[0], group, cdev)
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    total = offsets[-1]
    n_local = x.shape[0]
    if groups is not None:
        groups = torch.as_tensor(groups, dtype=torch.int64).to(device)
        if groups.shape != (total,):
            raise ValueError(f"groups must have shape [{total}] (all rows of all ranks), got {tuple(groups.shape)}")
        q_groups = groups[offsets[rank]:offsets[rank + 1]]
    else:
        q_groups = None

    best_s = x.new_full((n_local, k), float("-inf"))
    best_i = torch.full((n_local, k), -1, dtype=torch.int64, device=device)
    with block_searcher(backend, device, max_block_elems, precision) as search:
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
            s, i = search(x, keys, k, key_offset=offsets[src], self_keys=src == rank, query_groups=q_groups,
                          key_groups=k_groups)
            if n_local:
                best_s, best_i = merge_topk(best_s, best_i, s, i, k)
            del keys
    return best_s, best_i
