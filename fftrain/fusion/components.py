"""From kNN hits to a new label space: candidate pairs, connected components, guards, new ids.

    pairs, cos = candidate_pairs(sims, ids, offset, class_dataset, t1=0.7)    # this rank's hits
    pairs, cos = gather_pairs(pairs, cos, group)                              # every rank: all pairs
    plan = build_plan(pairs, cos, class_dataset=..., label_map=..., max_component=6)

Everything after `gather_pairs` is a pure function of the (deduplicated, sorted) pair list and
the tables, so every rank computes the same plan with no further communication, and the plan
does not depend on the world size or on the order in which pairs were found.

Ids here are *fused* class ids at the time of fusion (identity before the first fusion).
`class_dataset[f]` is the dataset of fused class f (of its smallest source class once merged).

Guards, applied to each connected component of the candidate graph:
- `max_component`: a component with more classes is not merged (all its classes stay as they
  are) and is reported with reason 'too_large'.
- `same_dataset_policy`, for a component holding two classes of one dataset (a chain
  A1 - B - A2 through classes of other datasets):
  'skip' (default): the component is not merged and is reported ('same_dataset'). The curated
      dataset says A1 and A2 are two people, so a chain through them is evidence of a
      look-alike or a noisy proxy, not of one identity. Leaving the classes apart costs at most
      a missed merge (the conflict DAIL had); a wrong merge would train two people as one for
      the rest of the run. The decision depends only on the component, never on edge order.
  'split': Kruskal-style: edges taken strongest first (ties by (a, b)), an edge is refused when
      it would put two classes of one dataset into one component. Keeps the most similar
      cross-dataset matches of the chain; refused edges are reported.
  'keep': merge the whole component anyway.
  With `allow_same_dataset=True` (pairs inside one dataset are candidates too: duplicate
  cleaning) same-dataset components are the point, and the policy is not applied ('keep').

New ids: contiguous, groups ordered by the smallest source class they contain (docs/ARCHITECTURE.md,
"Fusion protocol" 4). Before the first fusion that is the smallest fused id of the group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fftrain.config import FUSION_POLICIES as POLICIES
from fftrain.data.label_space import min_source_class
from fftrain.distributed import ProcessGroup, all_gather_object


@dataclass
class Component:
    """A group of old fused classes that becomes one new fused class."""

    new_id: int
    members: list[int]
    """Old fused ids, ascending."""
    edges: list[tuple[int, int, float]] = field(default_factory=list)
    """Candidate pairs (a < b, cosine) with both ends in the component, sorted by (a, b)."""


@dataclass
class Rejected:
    """A connected component of the candidate graph that was left unmerged."""

    members: list[int]
    edges: list[tuple[int, int, float]]
    reasons: list[str]
    """'too_large' and/or 'same_dataset'."""


@dataclass
class FusionPlan:
    old_to_new: np.ndarray
    """int64 [C_old]: new fused id of every old fused id."""
    num_classes_new: int
    new_class_dataset: np.ndarray
    """int64 [C_new]: dataset of the smallest source class of each new fused class."""
    components: list[Component]
    """Merged groups (two or more old classes), by new id."""
    rejected: list[Rejected]
    refused_edges: list[tuple[int, int, float]]
    """'split' policy: candidate pairs not followed because of the same-dataset rule."""
    stats: dict


def candidate_pairs(sims: torch.Tensor, ids: torch.Tensor, offset: int, class_dataset, t1: float,
                    allow_same_dataset: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """This rank's conflict pairs from its kNN hits: cosine > t1 and (unless allowed) different
    datasets. Returns (pairs [P, 2] int64 with a < b, cosines [P] float32), unsorted, may repeat."""
    s = sims.detach().float().cpu().numpy()
    j = ids.detach().cpu().numpy().astype(np.int64)
    table = np.asarray(class_dataset, dtype=np.int64)
    q = np.broadcast_to(np.arange(offset, offset + s.shape[0], dtype=np.int64)[:, None], j.shape)
    keep = (j >= 0) & (s > t1) & (j != q)
    if not allow_same_dataset:
        keep &= table[np.where(j >= 0, j, 0)] != table[q]
    a, b, c = q[keep], j[keep], s[keep]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1) if a.size else np.zeros((0, 2), np.int64)
    return pairs.astype(np.int64), c.astype(np.float32)


def top1_edges(sims: torch.Tensor, ids: torch.Tensor, offset: int, class_dataset, t1: float,
               allow_same_dataset: bool = False) -> np.ndarray:
    """This rank's directed edges query -> its nearest eligible neighbour (another class, of another
    dataset unless allowed), where that cosine is > t1: [E, 2] int64 (query, neighbour)."""
    s = sims.detach().float().cpu().numpy()
    j = ids.detach().cpu().numpy().astype(np.int64)
    table = np.asarray(class_dataset, dtype=np.int64)
    q = np.broadcast_to(np.arange(offset, offset + s.shape[0], dtype=np.int64)[:, None], j.shape)
    eligible = (j >= 0) & (j != q)
    if not allow_same_dataset:
        eligible &= table[np.where(j >= 0, j, 0)] != table[q]
    rows = np.flatnonzero(eligible.any(axis=1)) if s.shape[0] else np.zeros(0, np.int64)
    first = np.argmax(eligible[rows], axis=1)
    keep = s[rows, first] > t1
    return np.stack([q[rows, 0][keep], j[rows, first][keep]], axis=1).astype(np.int64).reshape(-1, 2)


def mutual_pairs(edges: np.ndarray, pairs: np.ndarray, cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of (pairs, cos) whose two classes are each other's top-1 (both directions in `edges`,
    every rank's `top1_edges`)."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    directed = {(int(a), int(b)) for a, b in edges}
    keep = np.array([(int(a), int(b)) in directed and (int(b), int(a)) in directed for a, b in pairs], dtype=bool)
    return pairs[keep] if keep.size else pairs, cos[keep] if keep.size else cos


def gather_edges(edges: np.ndarray, group: ProcessGroup | None) -> np.ndarray:
    """Every rank's `top1_edges` on every rank (one per class at most)."""
    parts = all_gather_object(np.asarray(edges, np.int64).reshape(-1, 2), group)
    return np.concatenate(parts)


def dedupe_pairs(pairs: np.ndarray, cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (a, b) rows sorted by (a, b); a pair found twice keeps its larger cosine."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    cos = np.asarray(cos, dtype=np.float32).reshape(-1)
    if pairs.shape[0] == 0:
        return pairs, cos
    order = np.lexsort((-cos, pairs[:, 1], pairs[:, 0]))  # by a, then b, then cosine descending
    pairs, cos = pairs[order], cos[order]
    first = np.ones(pairs.shape[0], dtype=bool)
    first[1:] = np.any(pairs[1:] != pairs[:-1], axis=1)
    return pairs[first], cos[first]


def gather_pairs(pairs: np.ndarray, cos: np.ndarray, group: ProcessGroup | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' pairs on every rank, deduplicated and sorted (the list is small: conflicts only)."""
    parts = all_gather_object((np.asarray(pairs, np.int64), np.asarray(cos, np.float32)), group)
    return dedupe_pairs(np.concatenate([p for p, _ in parts]), np.concatenate([c for _, c in parts]))


class _UnionFind:
    """Union by smallest id (the root of a set is its smallest member), path halving."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        lo, hi = (ra, rb) if ra < rb else (rb, ra)
        self.parent[hi] = lo
        return lo


def build_plan(pairs: np.ndarray, cos: np.ndarray, *, class_dataset, label_map=None,
               max_component: int = 6, same_dataset_policy: str = "skip",
               allow_same_dataset: bool = False) -> FusionPlan:
    """The new label space from the global candidate pairs (same result on every rank).

    pairs/cos: candidate pairs of old fused ids (any order, repeats allowed).
    class_dataset: [C_old] dataset of each old fused class.
    label_map: [C_src] source -> old fused id (None: identity), for the ordering of new ids.
    """
    if same_dataset_policy not in POLICIES:
        raise ValueError(f"unknown same_dataset_policy {same_dataset_policy!r}; available: {list(POLICIES)}")
    if max_component < 2:
        raise ValueError(f"max_component must be >= 2, got {max_component}")
    table = np.asarray(class_dataset, dtype=np.int64)
    num_old = int(table.shape[0])
    pairs, cos = dedupe_pairs(pairs, cos)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num_old):
        raise ValueError(f"pair ids must lie in [0, {num_old}), got [{pairs.min()}, {pairs.max()}]")
    if pairs.size and np.any(pairs[:, 0] == pairs[:, 1]):
        raise ValueError("a candidate pair joins a class with itself")
    policy = "keep" if allow_same_dataset else same_dataset_policy

    uf = _UnionFind()
    refused: list[tuple[int, int, float]] = []
    plist = pairs.tolist()
    clist = cos.tolist()
    if policy == "split":
        datasets: dict[int, set[int]] = {}
        for e in sorted(range(len(plist)), key=lambda e: (-clist[e], plist[e][0], plist[e][1])):
            a, b = plist[e]
            ra, rb = uf.find(a), uf.find(b)
            if ra == rb:
                continue
            da = datasets.pop(ra, None) or {int(table[a])}
            db = datasets.pop(rb, None) or {int(table[b])}
            if da & db:
                refused.append((a, b, clist[e]))
                datasets[ra], datasets[rb] = da, db
                continue
            datasets[uf.union(a, b)] = da | db
    else:
        for a, b in plist:
            uf.union(a, b)

    # connected components (root = smallest member), edges inside each
    nodes = sorted(uf.parent)
    comp_of = {n: uf.find(n) for n in nodes}
    members: dict[int, list[int]] = {}
    for n in nodes:
        members.setdefault(comp_of[n], []).append(n)
    edges: dict[int, list[tuple[int, int, float]]] = {r: [] for r in members}
    for (a, b), c in zip(plist, clist):
        if comp_of[a] == comp_of[b]:
            edges[comp_of[a]].append((a, b, c))
    refused = sorted(refused)

    comp_root = np.arange(num_old, dtype=np.int64)
    accepted: list[int] = []
    rejected: list[Rejected] = []
    kept_same_dataset = 0
    for root in sorted(members):
        m = members[root]
        if len(m) < 2:
            continue
        reasons = []
        if len(m) > max_component:
            reasons.append("too_large")
        dup = len(set(table[m].tolist())) < len(m)
        if dup and policy == "skip":
            reasons.append("same_dataset")
        if reasons:
            rejected.append(Rejected(members=m, edges=edges[root], reasons=reasons))
            continue
        kept_same_dataset += int(dup)
        comp_root[m] = root
        accepted.append(root)

    min_src = min_source_class(label_map, num_old)
    key_by_root = np.full(num_old, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(key_by_root, comp_root, min_src)
    key = key_by_root[comp_root]
    uniq, old_to_new = np.unique(key, return_inverse=True)
    old_to_new = old_to_new.astype(np.int64).reshape(-1)
    num_new = int(uniq.shape[0])
    new_class_dataset = np.empty(num_new, dtype=np.int64)
    rep = min_src == key  # the old class holding the group's smallest source class
    new_class_dataset[old_to_new[rep]] = table[rep]

    components = sorted((Component(int(old_to_new[r]), members[r], edges[r]) for r in accepted),
                        key=lambda c: c.new_id)
    sizes = [len(c.members) for c in components]
    stats = {
        "num_classes_old": num_old,
        "num_classes_new": num_new,
        "num_candidate_pairs": int(pairs.shape[0]),
        "num_components_merged": len(components),
        "num_classes_merged": int(sum(sizes)),
        "largest_component": int(max(sizes, default=0)),
        "num_rejected": len(rejected),
        "num_rejected_too_large": sum("too_large" in r.reasons for r in rejected),
        "num_rejected_same_dataset": sum("same_dataset" in r.reasons for r in rejected),
        "num_refused_edges": len(refused),
        "num_merged_with_same_dataset": kept_same_dataset,
        "same_dataset_policy": policy,
    }
    return FusionPlan(old_to_new, num_new, new_class_dataset, components, rejected, refused, stats)
