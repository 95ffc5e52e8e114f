"""The reshard's merge as it was before the streaming reshard (one exchange of whole shards, then this
fold over all received rows): the reference the streaming version must equal bit for bit.

    new_w, new_states = whole_shard_merge(w, states, old_to_new, c_new)   # one process: every row
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the fold's deterministic sum did not change; only the row movement streams now
from fftrain.fusion.reshard import _segment_sum

_EPS = 1e-12


def whole_shard_merge(w: torch.Tensor, states: list[torch.Tensor], old_to_new: torch.Tensor, c_new: int):
    """The single-process result of the whole-shard reshard (rows in ascending old id)."""
    flat = [s.reshape(s.shape[0], -1) for s in states]
    new_w, new_s = merge_rows(w.reshape(w.shape[0], -1), flat, old_to_new, c_new)
    return new_w.reshape(c_new, *w.shape[1:]), [n.reshape(c_new, *s.shape[1:]) for n, s in zip(new_s, states)]


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

