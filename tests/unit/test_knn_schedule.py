"""fftrain.fusion.knn.chunk_schedule: the order in which every rank walks the key chunks."""

from __future__ import annotations

import numpy as np
import torch

from fftrain.fusion.knn import chunk_schedule


def _rank_work(schedule, sizes, groups):
    """[steps, ranks] multiply-adds of each rank's queries of other groups against each chunk."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    g = groups.numpy()
    out = []
    for src, a, b in schedule:
        keys = g[offsets[src] + a:offsets[src] + b]
        out.append([sum(int((g[offsets[r]:offsets[r + 1]] != k).sum()) for k in keys) for r in range(len(sizes))])
    return np.array(out, dtype=np.float64)


def _lockstep_cost(work):
    """Each step waits for its slowest rank: the summed maxima over the balanced share."""
    return work.max(axis=1).sum() / (work.sum() / work.shape[1])


def test_without_groups_or_with_one_rank_the_chunks_go_rank_after_rank():
    assert chunk_schedule([5, 3], 2, None) == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 3)]
    assert chunk_schedule([5], 2, torch.zeros(5, dtype=torch.int64)) == [(0, 0, 2), (0, 2, 4), (0, 4, 5)]


def test_every_chunk_once_and_each_owners_chunks_in_order():
    sizes = [17, 0, 11, 9]
    groups = torch.from_numpy(np.random.default_rng(0).integers(0, 3, sum(sizes)))
    schedule = chunk_schedule(sizes, 4, groups)
    assert sorted(schedule) == sorted(chunk_schedule(sizes, 4, None))
    for owner in range(4):
        mine = [c for c in schedule if c[0] == owner]
        assert mine == sorted(mine)


def test_three_datasets_on_two_ranks_keep_the_ranks_in_step():
    """Rank 0 holds dataset 0 and half of 1, rank 1 the rest: on a chunk of dataset 0 rank 0 has a third of
    rank 1's work and the reverse on dataset 2, so rank after rank every step waits on the heavier rank
    (4/3 of the balanced share); alternating keeps the summed work of the ranks within one chunk's."""
    n = 300
    groups = torch.arange(3 * n) // n
    sizes = [3 * n // 2, 3 * n // 2]
    rows = 30
    before = _rank_work(chunk_schedule(sizes, rows, None), sizes, groups)
    after = _rank_work(chunk_schedule(sizes, rows, groups), sizes, groups)
    assert _lockstep_cost(before) > 1.3
    running = np.cumsum(after, axis=0)
    assert (running.max(axis=1) - running.min(axis=1)).max() <= after.max()
