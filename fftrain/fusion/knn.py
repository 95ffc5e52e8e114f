"""Distributed exact k-nearest-neighbour search over class proxies sharded across ranks.

    sims, ids = distributed_knn(head.weight, k=10, group=ctx.group, normalize=True)   # cosine, all ranks
    sims, ids = distributed_knn(unit, 10, None, groups=class_dataset)                 # one process, cross-dataset

Each rank holds a contiguous block of the rows (rank r: rows [offset_r, offset_r + n_r), the
rank-order concatenation, which is the fused class id under `class_sharding.shard_range`), in any
float dtype (the FC weight in its storage dtype: no whole-shard copy is made). The ranks first
exchange their row counts (shards may differ in size); then every shard is broadcast by its rank in
key chunks of at most `CHUNK_BYTES` (per device type) of fp32 rows, in one order every rank derives
from the counts and the groups (`chunk_schedule`). Each rank searches its own rows, in query blocks of
half that size, against the chunk in hand and folds the hits into a running top-k, packed
(`fftrain.search.pack_hits`: one int64 a hit, one topk a merge). The next chunk's broadcast is posted
before the search of this one, so a rank with little work on this chunk receives the next one while
the others still search. Memory above the shard: one key chunk in fp32 and the next one in flight (in
storage dtype), one fp32 query block, the backend's score block, and the running top-k ([n_local, k]
int64) -- the only part that grows with the shard. Inner product is the score; with `normalize` each
chunk and each query block is L2-normalised in fp32 first (F.normalize's division, row by row, so the
rows are those of the whole normalised shard) and the score is the cosine.

Self-matches are excluded by id. With `groups` (a global [C] int64 table, e.g. the dataset of
each class), a query only gets neighbours from other groups; the search is still exact. A query block
of one group is not searched against a chunk of the same group at all; otherwise faiss searches each
rectangle of a run of one group's keys against the queries of other groups (views, in a label space
laid out dataset after dataset; per-group gathers where groups interleave), and torch masks the score
block.

The search of each block, the backends ('auto', 'faiss', 'torch'), the fallback policy and the
order of ties are `fftrain.search`'s: with one process this is `fftrain.search.top_k(x, x, k,
self_keys=True, ...)` on the (normalised) rows, the same neighbours, and the same similarities up
to the last bits of a GEMM whose rounding depends on its block shapes (bit for bit when the shard
fits one chunk). Where fewer than k neighbours exist, the tail is id -1 with similarity -inf.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fftrain.distributed import ProcessGroup, all_gather_list, broadcast_async_, comm_device, rank_of, world_size_of
from fftrain.search import (PACKED_ID_LIMIT, PACKED_NONE, block_searcher, merge_topk, pack_hits, resolve_backend,
                            top_packed, unpack_hits)

# resolve_backend: fftrain.search's, for run_fusion
__all__ = ["distributed_knn", "gather_sizes", "chunk_rows", "chunk_schedule", "chunk_bytes_for", "CHUNK_BYTES",
           "resolve_backend"]

CHUNK_BYTES = {"cpu": 8 * 2**20, "cuda": 16 * 2**20}
"""fp32 bytes of one key chunk, per device type (4096 / 8192 rows at D = 512); a query block is half of it:
fixed, not shard-sized. On the CPU, 2048 queries against 4096 keys is the smallest search at which faiss's
GEMM and heap reach ~0.93 of the machine's GEMM rate (benchmarks/RESULTS.md, "Fusion"), and fusion's working
set stays under half a 120K-class bf16 shard on two ranks; a GPU wants larger blocks, and its shards are
larger."""


def chunk_bytes_for(device, table: dict[str, int] | None = None) -> int:
    """`table`'s bytes for this device type, a GPU's for any accelerator (None: this module's
    `CHUNK_BYTES`, read at the call; the reshard passes its own)."""
    table = CHUNK_BYTES if table is None else table
    return table.get(torch.device(device).type, table["cuda"])


def gather_sizes(n_local: int, group: ProcessGroup | None, device: torch.device | None = None) -> list[int]:
    """Every rank's row count, in rank order."""
    if group is None or world_size_of(group) == 1:
        return [int(n_local)]
    t = torch.tensor([int(n_local)], dtype=torch.int64, device=comm_device(group, device or "cpu"))
    parts = all_gather_list(t, group)
    return [int(p.item()) for p in parts]


def distributed_knn(local_rows: torch.Tensor, k: int, group: ProcessGroup | None, *,
                    normalize: bool = False, backend: str = "auto", groups: torch.Tensor | None = None,
                    max_block_elems: int | None = None, precision: str = "fp32",
                    chunk_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner-product neighbours of this rank's rows among all ranks' rows.

    local_rows: [n_local, D] float rows of this rank (any float dtype, e.g. the FC weight shard in its
      storage dtype), in the rank-order concatenation of all shards; shards may differ in size (also 0 rows).
    k: neighbours per row (>= 1).
    group: the process group (None: one process). Every rank of it must call.
    normalize: L2-normalise the rows (fp32, one bounded block at a time): the score is the cosine.
    groups: optional global [C] int64 table; a query gets no neighbour of its own group.
    precision: 'fp32', 'bf16' or 'auto' (`fftrain.search.resolve_precision`: bf16 scores re-scored in fp32).
    chunk_bytes: the fp32 bytes of one key chunk (a query block is half of it), at least one row each
      (None: the module's `CHUNK_BYTES` for the rows' device, read at the call).
    Returns (sims [n_local, k] float32, ids [n_local, k] int64 global row ids), best first, on
    the rows' device; missing neighbours are id -1, similarity -inf.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = _raw_rows(local_rows)
    device, dim = x.device, x.shape[1]
    world, rank = world_size_of(group), rank_of(group)
    cdev = comm_device(group, device)
    sizes = gather_sizes(x.shape[0], group, cdev)
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    if groups is not None:
        groups = torch.as_tensor(groups, dtype=torch.int64).to(device)
        if groups.shape != (offsets[-1],):
            raise ValueError(f"groups must have shape [{offsets[-1]}] (all rows of all ranks), "
                             f"got {tuple(groups.shape)}")
    key_bytes = chunk_bytes_for(device) if chunk_bytes is None else chunk_bytes
    rows = chunk_rows(dim, key_bytes)
    queries = QueryBlocks(x, chunk_rows(dim, key_bytes // 2), normalize, offsets[rank], groups)
    best = RunningTopK(x.shape[0], k, offsets[-1], device)
    with block_searcher(backend, device, max_block_elems, precision) as search:
        incoming = KeyStream(x, chunk_schedule(sizes, rows, groups), rank, group, cdev)
        for src, a, b in incoming.schedule:
            keys = _unit(incoming.take(), normalize)  # the chunk as received is dropped here, before ...
            incoming.post_next()                      # ... the next one is received beside the fp32 keys
            start = offsets[src] + a
            k_groups = groups[start:offsets[src] + b] if groups is not None else None
            for qa, qb, q, q_groups in queries.against(_sole_group(k_groups)):
                s, i = search(q, keys, k, key_offset=start, query_offset=offsets[rank] + qa,
                              query_groups=q_groups, key_groups=k_groups)
                best.merge(qa, qb, s, i)
            del keys
    return best.result()


MAX_SCHEDULE_GROUPS = 4096
"""`chunk_schedule` counts each chunk's rows per group ([chunks, groups] numbers); with more groups than
this (datasets, in fusion) it keeps the plain order rather than hold that table."""


def chunk_rows(dim: int, chunk_bytes: int) -> int:
    """Rows of one key chunk and of one query block: `chunk_bytes` of fp32 rows, at least one."""
    return max(1, int(chunk_bytes) // (4 * max(1, dim)))


def _raw_rows(x) -> torch.Tensor:
    """x as a detached [n, D] float tensor in its own dtype (a numpy array is shared, not copied, when it can be)."""
    rows = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if rows.dim() != 2:
        raise ValueError(f"local_rows must be [n, D], got shape {tuple(rows.shape)}")
    if not rows.is_floating_point():
        raise ValueError(f"local_rows must be a float tensor, got {rows.dtype}")
    return rows


def _unit(rows: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The rows in contiguous fp32, L2-normalised when `normalize` (what the search reads). A copy the
    cast made (bf16 storage) is normalised in place: F.normalize's division, without a second block."""
    fp32 = rows.float().contiguous()
    if not normalize:
        return fp32
    if fp32.data_ptr() == rows.data_ptr():
        return F.normalize(fp32, dim=1)
    return fp32.div_(torch.linalg.vector_norm(fp32, dim=1, keepdim=True).clamp_min_(1e-12))


def chunk_schedule(sizes: list[int], rows: int, groups: torch.Tensor | None) -> list[tuple[int, int, int]]:
    """The key chunks (owner rank, first row, end row) in the order every rank walks them: rank after
    rank without groups or with one rank. With groups a rank's work on a chunk is its queries of the
    *other* groups times the chunk's rows, so ranks that hold different datasets have uneven work on one
    chunk, and long runs of one dataset's chunks would leave the lighter ranks waiting (a rank is at most
    one chunk ahead: the broadcast in flight). So the next chunk is, at each step, the next one of the
    owner whose chunk keeps the ranks' summed work closest together (each owner's chunks stay in order)."""
    per_owner = [[(src, a, min(n, a + rows)) for a in range(0, n, rows)] for src, n in enumerate(sizes)]
    n_groups = int(groups.max()) + 1 if groups is not None and groups.numel() else 0
    if len(sizes) == 1 or not 0 < n_groups <= MAX_SCHEDULE_GROUPS:
        return [c for chunks in per_owner for c in chunks]
    work = _chunk_work(sizes, rows, groups, n_groups)
    heads, done, order = [0] * len(sizes), np.zeros(len(sizes)), []
    while True:
        owners = [o for o in range(len(sizes)) if heads[o] < len(per_owner[o])]
        if not owners:
            return order
        spread = [np.ptp(done + work[o][heads[o]]) for o in owners]
        o = owners[int(np.argmin(spread))]
        done += work[o][heads[o]]
        order.append(per_owner[o][heads[o]])
        heads[o] += 1


def _chunk_work(sizes: list[int], rows: int, groups: torch.Tensor, n_groups: int) -> list[np.ndarray]:
    """Per owner, [its chunks, ranks]: the multiply-adds of each rank's queries against each chunk, its
    queries of the other groups only (a rank's rows are its own chunks' rows; groups below `n_groups`)."""
    step = max(1, 2**22 // rows) * rows  # whole chunks of rows per bincount: bounds its temporary
    counts, start = [], 0  # per owner, [chunks, groups] rows of each group in each chunk
    for n in sizes:
        n_chunks = -(-n // rows)
        parts = []
        for a in range(0, n, step):
            g = groups[start + a:start + min(n, a + step)]
            chunk = torch.arange(g.numel(), device=g.device) // rows
            parts.append(torch.bincount(chunk * n_groups + g, minlength=-(-g.numel() // rows) * n_groups))
        counts.append(torch.cat(parts).view(n_chunks, n_groups).cpu().numpy().astype(np.float64) if parts
                      else np.zeros((0, n_groups)))
        start += n
    queries = np.stack([c.sum(axis=0) for c in counts])  # [ranks, groups]
    return [c.sum(axis=1, keepdims=True) * queries.sum(axis=1)[None, :] - c @ queries.T for c in counts]


class KeyStream:
    """The key chunks of `schedule`, each broadcast by its owner: `take()` gives the next one (on the rows'
    device), `post_next()` posts the broadcast of the one after it without waiting."""

    def __init__(self, x, schedule, rank, group, cdev):
        self.x, self.schedule, self.rank, self.group, self.cdev = x, schedule, rank, group, cdev
        self.position, self.pending = 0, None

    def take(self) -> torch.Tensor:
        if world_size_of(self.group) == 1:
            _, a, b = self.schedule[self.position]
            self.position += 1
            return self.x[a:b]
        buf, work = self.pending if self.pending is not None else self._post(self.position)
        self.pending = None
        work.wait()
        self.position += 1
        return buf.to(self.x.device)

    def post_next(self) -> None:
        if world_size_of(self.group) > 1 and self.position < len(self.schedule):
            self.pending = self._post(self.position)

    def _post(self, position: int):
        src, a, b = self.schedule[position]
        x = self.x
        if src == self.rank:
            buf = x[a:b].to(self.cdev).contiguous()
        else:
            buf = torch.empty((b - a, x.shape[1]), dtype=x.dtype, device=self.cdev)
        return buf, broadcast_async_(buf, src, self.group)


class RunningTopK:
    """The best k hits so far of each of n query rows: packed (`fftrain.search.pack_hits`, one int64 a
    hit, one topk a merge) when every id fits, else a (sims, ids) pair merged by `merge_topk`."""

    def __init__(self, n: int, k: int, n_ids: int, device):
        self.k = k
        self.packed = n_ids <= PACKED_ID_LIMIT
        if self.packed:
            self.keys = torch.full((n, k), PACKED_NONE, dtype=torch.int64, device=device)
        else:
            self.sims = torch.full((n, k), float("-inf"), dtype=torch.float32, device=device)
            self.ids = torch.full((n, k), -1, dtype=torch.int64, device=device)

    def merge(self, a: int, b: int, sims: torch.Tensor, ids: torch.Tensor) -> None:
        """Fold candidate hits of rows [a, b) in."""
        if self.packed:
            self.keys[a:b] = top_packed(torch.cat([self.keys[a:b], pack_hits(sims, ids)], dim=1), self.k)
        else:
            self.sims[a:b], self.ids[a:b] = merge_topk(self.sims[a:b], self.ids[a:b], sims, ids, self.k)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return unpack_hits(self.keys) if self.packed else (self.sims, self.ids)


class QueryBlocks:
    """This rank's rows in blocks of `rows` rows: (start, end, the block in fp32 (normalised), its groups).
    The block is made again per key chunk unless the shard is one block (kept then)."""

    def __init__(self, x, rows, normalize, offset, groups):
        self.x, self.normalize = x, normalize
        groups = groups[offset:offset + x.shape[0]] if groups is not None else None
        self.blocks = []  # (start, end, groups, the one group of them or None), found once for all chunks
        for a in range(0, x.shape[0], rows):
            b = min(x.shape[0], a + rows)
            block_groups = groups[a:b] if groups is not None else None
            self.blocks.append((a, b, block_groups, _sole_group(block_groups)))
        self.whole = _unit(x, normalize) if x.shape[0] <= rows else None

    def against(self, key_group: int | None):
        """The blocks with a query outside `key_group` (the one group of a key chunk; None: all blocks):
        a block of that group alone has no neighbour there, so it is neither made nor searched."""
        for a, b, q_groups, sole in self.blocks:
            if key_group is not None and sole == key_group:
                continue
            q = self.whole if self.whole is not None else _unit(self.x[a:b], self.normalize)
            yield a, b, q, q_groups


def _sole_group(groups: torch.Tensor | None) -> int | None:
    """The group of every row of a block, when there is one (None: no groups, or several)."""
    if groups is None or groups.numel() == 0:
        return None
    lo, hi = int(groups.min()), int(groups.max())
    return lo if lo == hi else None
