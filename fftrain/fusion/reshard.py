"""Move FC rows (and their optimizer state) to the new label space and its new shard owners.

    new_w, [new_mom] = reshard_merge(head.weight, [head.momentum_buffer], old_to_new, c_new, group)

Every rank holds rows [start, end) of shard_range(C_old, rank, W) of the weight and of each
state tensor (same leading size). Old row c goes to new fused class old_to_new[c], owned by
shard_range(C_new, ., W): all-to-all (a count exchange, then one all_to_all_single with
per-destination split sizes per tensor; gloo and NCCL both implement it, while gloo's
`all_to_all` needs equal sizes) carries the rows with their new ids; the owner folds the members
of each new class together:

- weight: a new class with one member keeps that row bit for bit. A merged class gets the mean
  of its members' unit directions, renormalised, scaled to the mean of its members' norms:
      w = normalize(mean_i w_i / |w_i|) * mean_i |w_i|
  The head normalises proxies in the forward, so only the direction changes the logits; the
  norm sets the effective step size of SGD on the row (the cosine's gradient scales as 1/|w|),
  so the merged row keeps the norm scale its members were trained at.
- each state tensor (e.g. SGD momentum): plain mean of the members' rows.
Rows arrive at their owner in ascending old id whatever the world size, so the sums are taken
in the same order on one rank and on N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fftrain.distributed.class_sharding import owner_of, shard_range
from fftrain.distributed import ProcessGroup, all_to_all_single_, comm_device, rank_of, world_size_of

_EPS = 1e-12


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
        out.append(recv.to(device))
    return out


def merge_rows(weight_rows: torch.Tensor, state_rows: list[torch.Tensor], new_local: torch.Tensor,
               n_new: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Fold rows with the same target row `new_local` (in [0, n_new)) together; see module doc.

    Rows alone in their target are copied; only the members of merged targets are computed on."""
    counts = torch.bincount(new_local, minlength=n_new)
    if counts.numel() > n_new:
        raise ValueError(f"row index {int(new_local.max())} past the {n_new} new rows of this rank")
    if n_new and int(counts.min()) == 0:
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"new rows {missing} received no member: old_to_new must map onto "
                         f"[0, C_new)")
    multi = counts[new_local] > 1
    single_rows, single_to = torch.nonzero(~multi).flatten(), new_local[~multi]
    multi_rows = torch.nonzero(multi).flatten()
    targets, slot = torch.unique(new_local[multi_rows], return_inverse=True)  # merged targets, compact
    cnt = counts[targets].to(torch.float32)[:, None]

    def fold(rows: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
        out = rows.new_empty((n_new, rows.shape[1]))
        out[single_to] = rows[single_rows]
        out[targets] = merged.to(rows.dtype)
        return out

    w = weight_rows[multi_rows].to(torch.float32)
    norms = w.norm(dim=1, keepdim=True)
    sum_dir = _segment_sum(w / norms.clamp(min=_EPS), slot, targets.numel())
    sum_norm = _segment_sum(norms, slot, targets.numel())
    new_w = fold(weight_rows, F.normalize(sum_dir, dim=1, eps=_EPS) * (sum_norm / cnt))
    new_states = []
    for s in state_rows:
        sf = s[multi_rows].to(torch.float32)
        new_states.append(fold(s, _segment_sum(sf, slot, targets.numel()) / cnt))
    return new_w, new_states


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
                  num_classes_new: int, group: ProcessGroup | None
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """This rank's new weight shard [n_new_local, ...] and state shards for C_new classes.

    local_weight: rows [start, end) of shard_range(len(old_to_new), rank, W); states: tensors
    with the same leading size (any trailing shape). old_to_new: int64 [C_old] onto [0, C_new),
    identical on every rank. Every rank of `group` must call.
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
    new_ids = torch.as_tensor(old_to_new, dtype=torch.int64).to(device)[start:end]
    w = local_weight.detach().reshape(local_weight.shape[0], -1)
    flat_states = [s.detach().reshape(s.shape[0], -1) for s in states]
    dest = _owner(new_ids, num_classes_new, world)
    recv_ids, recv_w, *recv_states = exchange_rows([new_ids, w, *flat_states], dest, group)
    new_start, new_end = shard_range(num_classes_new, rank, world)
    new_w, new_states = merge_rows(recv_w, recv_states, recv_ids - new_start, new_end - new_start)
    new_w = new_w.reshape(new_end - new_start, *local_weight.shape[1:])
    new_states = [n.reshape(new_end - new_start, *s.shape[1:]) for n, s in zip(new_states, states)]
    return new_w, new_states


def _owner(ids: torch.Tensor, num_classes: int, world: int) -> torch.Tensor:
    if world == 1:
        return torch.zeros_like(ids)
    return owner_of(ids, num_classes, world)
