"""Move FC rows (and their optimizer state) to the new label space and its new shard owners.

    new_w, [new_mom] = reshard_merge(head.weight, [head.momentum_buffer], old_to_new, c_new, group)

Every rank holds rows [start, end) of shard_range(C_old, rank, W) of the weight and of each
state tensor (same leading size). Old row c goes to new fused class old_to_new[c], owned by
shard_range(C_new, ., W). The rows stream in chunks of at most `chunk_rows` local rows (a byte budget,
`CHUNK_BYTES`, that does not grow with the shard): per chunk, a count exchange and one
all_to_all_single with per-destination split sizes per tensor (gloo and NCCL both implement it,
while gloo's `all_to_all` needs equal sizes). The owner writes a row that is alone in its new
class straight into its new shard (allocated once, in the storage dtype); the members of merged
classes (a small share of the rows) wait, in the storage dtype, until all have arrived, and are
then folded together:

- weight: a new class with one member keeps that row bit for bit. A merged class gets the mean
  of its members' unit directions, renormalised, scaled to the mean of its members' norms:
      w = normalize(mean_i w_i / |w_i|) * mean_i |w_i|
  The head normalises proxies in the forward, so only the direction changes the logits; the
  norm sets the effective step size of SGD on the row (the cosine's gradient scales as 1/|w|),
  so the merged row keeps the norm scale its members were trained at.
- each state tensor (e.g. SGD momentum): plain mean of the members' rows.
The members are folded in ascending old id whatever the world size and chunk size, so the sums are
taken in the same order on one rank and on N. Memory above the inputs: the new shard, one chunk's
send and receive buffers (at most W chunks arrive per step), and the merged classes' members.
`in_place=True` (the trainer's fusion) writes the new shard over the old one instead: no new shard,
only the rows that arrive before their slot's old row has been sent wait (the classes the ranks
before merged away, a few % of a shard), with the same bits as the copying path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fftrain.distributed.class_sharding import owner_of, shard_range, shard_ranges
from fftrain.distributed import ProcessGroup, all_to_all_single_, comm_device, rank_of, world_size_of
from fftrain.fusion.knn import chunk_bytes_for

_EPS = 1e-12
CHUNK_BYTES = {"cpu": 4 * 2**20, "cuda": 16 * 2**20}
"""Rows sent per chunk step, per device type: this many bytes of one rank's rows (weight and states
together). The CPU's 4 MiB keep the in-place reshard under the kNN's working set (benchmarks/RESULTS.md,
"Fusion memory"); a GPU's shards are larger and its collectives want larger messages."""


def exchange_rows(tensors: list[torch.Tensor], dest: torch.Tensor, group: ProcessGroup | None
                  ) -> list[torch.Tensor]:
    """Send row i of each tensor in `tensors` (same leading size n) to rank dest[i].

    Returns the received tensors. Rows from one source keep their order; sources arrive in rank
    order. One count exchange, then one all_to_all_single per tensor."""
    world = world_size_of(group)
    if world == 1:
        return list(tensors)
    device = tensors[0].device
    cdev = comm_device(group, device)
    order = torch.argsort(dest, stable=True)
    send_counts = torch.bincount(dest, minlength=world).to(torch.int64).to(cdev)
    recv_counts = torch.empty_like(send_counts)
    all_to_all_single_(recv_counts, send_counts, group)
    in_splits, out_splits = send_counts.tolist(), recv_counts.tolist()
    out = []
    for t in tensors:
        send = t[order].to(cdev).contiguous()
        recv = send.new_empty((sum(out_splits), *send.shape[1:]))
        all_to_all_single_(recv, send, group, output_split_sizes=out_splits, input_split_sizes=in_splits)
        del send
        out.append(recv.to(device))
    return out


def fold_merged(weight_rows: torch.Tensor, state_rows: list[torch.Tensor], target: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The merge rule over the members of merged classes (rows in ascending old id; `target`: each
    row's new local row). Returns (the targets, ascending; their weight rows; their state rows),
    computed in float32 and returned in the rows' dtypes."""
    targets, slot = torch.unique(target, return_inverse=True)
    cnt = torch.bincount(slot, minlength=targets.numel()).to(torch.float32)[:, None]
    w = weight_rows.to(torch.float32)
    norms = w.norm(dim=1, keepdim=True)
    sum_dir = _segment_sum(w / norms.clamp(min=_EPS), slot, targets.numel())
    del w  # before the states' fp32 copies
    sum_norm = _segment_sum(norms, slot, targets.numel())
    new_w = (F.normalize(sum_dir, dim=1, eps=_EPS) * (sum_norm / cnt)).to(weight_rows.dtype)
    new_states = [(_segment_sum(s.to(torch.float32), slot, targets.numel()) / cnt).to(s.dtype) for s in state_rows]
    return targets, new_w, new_states


def _segment_sum(values: torch.Tensor, slot: torch.Tensor, n: int) -> torch.Tensor:
    """out[t] = sum of values[i] with slot[i] == t, added in row order. Unlike index_add_ (atomics on
    CUDA, so the rounding depends on thread timing) this gives the same bits on every run and device:
    round j adds the j-th member of every segment, and no index repeats within a round."""
    out = values.new_zeros((n, *values.shape[1:]))
    if slot.numel() == 0:
        return out
    order = torch.argsort(slot, stable=True)
    sorted_slot = slot[order]
    first = torch.searchsorted(sorted_slot, sorted_slot)  # where each row's segment begins
    member = torch.arange(slot.numel(), device=slot.device) - first
    for j in range(int(member.max()) + 1):
        rows = order[member == j]
        out[slot[rows]] += values[rows]
    return out


def reshard_merge(local_weight: torch.Tensor, states: list[torch.Tensor], old_to_new: torch.Tensor,
                  num_classes_new: int, group: ProcessGroup | None, *, chunk_rows: int | None = None,
                  in_place: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """This rank's new weight shard [n_new_local, ...] and state shards for C_new classes.

    local_weight: rows [start, end) of shard_range(len(old_to_new), rank, W); states: tensors
    with the same leading size (any trailing shape). old_to_new: int64 [C_old] onto [0, C_new),
    identical on every rank. chunk_rows: local rows sent per step (None: `CHUNK_BYTES` worth).
    Every rank of `group` must call. in_place False: the inputs are not modified. in_place True
    (contiguous inputs): the new rows are written over the first n_new_local rows of each input
    (n_new_local <= n_local: C_new <= C_old) and those views are returned, so no new shard is
    allocated; the inputs' other rows are left undefined.
    """
    world, rank = world_size_of(group), rank_of(group)
    num_old = int(old_to_new.shape[0])
    start, end = shard_range(num_old, rank, world)
    if local_weight.shape[0] != end - start:
        raise ValueError(f"rank {rank}: local weight has {local_weight.shape[0]} rows, but "
                         f"shard_range({num_old}, {rank}, {world}) is [{start}, {end})")
    for i, s in enumerate(states):
        if s.shape[0] != local_weight.shape[0]:
            raise ValueError(f"state {i} has {s.shape[0]} rows, the weight {local_weight.shape[0]}")
    device = local_weight.device
    all_new = torch.as_tensor(old_to_new, dtype=torch.int64).to(device)
    members = _member_counts(all_new, num_classes_new)
    new_start, new_end = shard_range(num_classes_new, rank, world)
    n_new = new_end - new_start
    if in_place and (n_new > local_weight.shape[0] or not all(t.is_contiguous() for t in (local_weight, *states))):
        raise ValueError(f"in_place needs contiguous inputs of at least {n_new} rows")
    tensors = [t.detach().reshape(t.shape[0], -1) for t in (local_weight, *states)]
    row_bytes = sum(t.shape[1] * t.element_size() for t in tensors) + 16
    chunk = max(1, chunk_rows or chunk_bytes_for(device, CHUNK_BYTES) // row_bytes)
    steps = -(-_per_rank_rows(num_old, world) // chunk)  # the same count on every rank
    new = [t[:n_new] if in_place else t.new_empty((n_new, t.shape[1])) for t in tensors]
    waiting = _Members(members[new_start:new_end], tensors)
    early = _Early(chunk) if in_place else None
    for step in range(steps):
        a, b = min(start + step * chunk, end), min(start + (step + 1) * chunk, end)
        ids = torch.stack([torch.arange(a, b, device=device), all_new[a:b]], dim=1)
        recv_ids, *recv = exchange_rows([ids, *(t[a - start:b - start] for t in tensors)],
                                        _owner(all_new[a:b], num_classes_new, world), group)
        if in_place and world == 1:  # exchange_rows handed back views of the rows about to be overwritten
            recv = [rows.clone() for rows in recv]
        target = recv_ids[:, 1] - new_start
        alone = members[recv_ids[:, 1]] == 1
        if early is not None:
            early.write(new, target[alone], [rows[alone] for rows in recv], step)
        elif bool(alone.all()):  # the common chunk: no masked copies
            for out, rows in zip(new, recv):
                out[target] = rows
        else:
            for out, rows in zip(new, recv):
                out[target[alone]] = rows[alone]
        if not bool(alone.all()):
            waiting.add(recv_ids[~alone, 0], target[~alone], [rows[~alone] for rows in recv])
        del recv_ids, recv
    if early is not None:
        early.flush(new, steps)
    waiting.fold_into(new, chunk)
    return (new[0].reshape(n_new, *local_weight.shape[1:]),
            [n.reshape(n_new, *s.shape[1:]) for n, s in zip(new[1:], states)])


class _Members:
    """The members of this rank's merged classes, written as they arrive into one buffer per tensor
    sized from the member counts (no list of pieces to concatenate and copy), then folded class by
    class in parts of about a chunk: the fold holds the buffer, one part's rows in order and their fp32
    working set."""

    def __init__(self, member_counts: torch.Tensor, tensors: list[torch.Tensor]):
        n = int(member_counts[member_counts > 1].sum())
        self.rows = [t.new_empty((n, t.shape[1])) for t in tensors]
        self.old_ids = torch.empty(n, dtype=torch.int64, device=member_counts.device)
        self.targets = torch.empty_like(self.old_ids)
        self.filled = 0

    def add(self, old_ids: torch.Tensor, targets: torch.Tensor, rows: list[torch.Tensor]) -> None:
        a, b = self.filled, self.filled + old_ids.numel()
        self.old_ids[a:b], self.targets[a:b] = old_ids, targets
        for buf, r in zip(self.rows, rows):
            buf[a:b] = r
        self.filled = b

    def fold_into(self, new: list[torch.Tensor], chunk: int) -> None:
        """The merge rule over each class's members, in ascending old id, written to its new row."""
        if self.filled == 0:
            return
        by_old_id = torch.argsort(self.old_ids[:self.filled])
        order = by_old_id[torch.argsort(self.targets[by_old_id], stable=True)]  # by class, then by old id
        target = self.targets[order]
        for a, b in _class_parts(target, chunk):
            part = order[a:b]
            targets, merged_w, merged_states = fold_merged(self.rows[0][part], [r[part] for r in self.rows[1:]],
                                                           target[a:b])
            for out, merged in zip(new, [merged_w, *merged_states]):
                out[targets] = merged


def _class_parts(target: torch.Tensor, rows: int) -> list[tuple[int, int]]:
    """Row ranges of about `rows` rows over members grouped by class (`target` sorted), a class's
    members in one range, so the fold's fp32 working set is bounded like a chunk; each class folds
    alone, so the bits are those of one fold over all."""
    counts = torch.unique_consecutive(target, return_counts=True)[1].tolist()
    parts, first, end = [], 0, 0
    for c in counts:
        if end > first and end + c - first > rows:
            parts.append((first, end))
            first = end
        end += c
    parts.append((first, end))
    return parts


class _Early:
    """In place, new row t lives where old row t did, which this rank sends at step t // chunk: a row
    that arrives before then waits here. Only slots past the current step's chunk can wait, so fewer
    rows than the new shard ever do; in fusion's maps (new ids in the order of the smallest member) a
    lone row moves down by the classes merged away below it, which rarely puts it ahead of its slot."""

    def __init__(self, chunk: int):
        self.chunk = chunk
        self.targets: list[torch.Tensor] = []
        self.rows: list[list[torch.Tensor]] = []
        self.peak = 0
        """the most rows that waited at once: fewer than the new shard (at step s only slots past s's
        chunk can wait), and none where each row keeps its place, as in fusion's maps"""

    def write(self, new: list[torch.Tensor], target: torch.Tensor, rows: list[torch.Tensor], step: int) -> None:
        """This step's rows: written where their slot was sent by `step`, kept waiting otherwise."""
        self.targets.append(target)
        self.rows.append(rows)
        self.flush(new, step)
        self.peak = max(self.peak, sum(int(t.numel()) for t in self.targets))

    def flush(self, new: list[torch.Tensor], step: int) -> None:
        """Write the waiting rows whose slots were sent by `step`."""
        keep_t, keep_r = [], []
        for target, rows in zip(self.targets, self.rows):
            free = target // self.chunk <= step
            for out, r in zip(new, rows):
                out[target[free]] = r[free]
            if not bool(free.all()):
                keep_t.append(target[~free])
                keep_r.append([r[~free] for r in rows])
        self.targets, self.rows = keep_t, keep_r


def _member_counts(old_to_new: torch.Tensor, num_classes_new: int) -> torch.Tensor:
    """Old classes per new class; every new class must have one (old_to_new onto [0, C_new))."""
    if old_to_new.numel() and (int(old_to_new.min()) < 0 or int(old_to_new.max()) >= num_classes_new):
        raise ValueError(f"old_to_new has ids outside [0, {num_classes_new})")
    counts = torch.bincount(old_to_new, minlength=num_classes_new)
    if num_classes_new and int(counts.min()) == 0:
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"new rows {missing} received no member: old_to_new must map onto [0, C_new)")
    return counts


def _per_rank_rows(num_classes: int, world: int) -> int:
    return max(b - a for a, b in shard_ranges(num_classes, world))


def _owner(ids: torch.Tensor, num_classes: int, world: int) -> torch.Tensor:
    if world == 1:
        return torch.zeros_like(ids)
    return owner_of(ids, num_classes, world)
