"""Clustering the identity-disjoint samples on a kNN graph.

    graph = knn_graph(embeddings, k=30)                        # exact (flat, fftrain.search) or faiss IVF search
    labels = cluster(graph, backend="infomap", threshold=0.5)  # [N] int64, contiguous from 0
    labels = drop_small(labels, min_size=3)                    # smaller clusters -> -1

Backends (each takes the kNN edges whose cosine is above `threshold`, weighted by the cosine):
- 'infomap': the map equation (`infomap` package, two-level, undirected flow); the default. On
  face kNN graphs it is the strongest unsupervised method published (pairwise F 93.98 on MS1M
  part1 where the supervised GCN-V+E reaches 87.93).
- 'leiden': Leiden optimisation of the constant Potts model (`leidenalg` on `igraph`) with
  `resolution`: a cluster's summed edge cosine must exceed resolution x its number of member pairs.
- 'components': the baseline, connected components of the thresholded graph (scipy).

Timing and memory: the kNN search is O(N^2 D) exact or O(N * nprobe/nlist * N * D) with IVF; the
graph is N*k edges; both graph backends are near-linear in the edges.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fftrain.search import best_hits, top_k, unit_rows

BACKENDS = ("infomap", "leiden", "components")
KNN_INDEXES = ("auto", "flat", "ivf")
# Defaults chosen on a development world (planted_world(overlap=0.25, seed=1)) before any measurement;
# the cosine scale of a real network differs: check on data with known identities (--truth)
DEFAULT_RESOLUTION = 0.02  # leiden (CPM)
DEFAULT_THRESHOLDS = {"infomap": 0.45, "leiden": 0.45, "components": 0.55}
AUTO_FLAT_MAX = 20000  # 'auto': exact search up to this many samples, IVF above


@dataclass
class KnnGraph:
    sims: np.ndarray  # [N, k] float32 cosine of each row's neighbours, best first
    ids: np.ndarray   # [N, k] int64, -1 where fewer than k exist
    seconds: float
    index: str

    @property
    def num_nodes(self) -> int:
        return len(self.ids)

    def edges(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src, dst, cosine) of every kNN edge above `threshold`, self loops and duplicates removed
        (each undirected edge once, src < dst)."""
        n, k = self.ids.shape
        src = np.repeat(np.arange(n, dtype=np.int64), k)
        dst, sim = self.ids.ravel(), self.sims.ravel()
        keep = (dst >= 0) & (dst != src) & (sim > threshold)
        src, dst, sim = src[keep], dst[keep], sim[keep]
        lo, hi = np.minimum(src, dst), np.maximum(src, dst)
        key = lo * n + hi
        _, first = np.unique(key, return_index=True)
        return lo[first], hi[first], sim[first].astype(np.float64)


def knn_graph(embeddings, k: int = 30, *, index: str = "auto", nprobe: int = 16, seed: int = 0) -> KnnGraph:
    """The k nearest neighbours (self excluded) of every L2-normalised row, by inner product."""
    if index not in KNN_INDEXES:
        raise ValueError(f"unknown kNN index {index!r}; available: {list(KNN_INDEXES)}")
    x = unit_rows(embeddings)
    n = x.shape[0]
    width = min(k, n - 1)
    kind = index if index != "auto" else ("flat" if n <= AUTO_FLAT_MAX else "ivf")
    started = time.perf_counter()
    if width < 1:
        sims, ids = np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    elif kind == "flat":
        sims, ids = (t.numpy() for t in top_k(x, x, width, self_keys=True))
    else:
        sims, ids = _ivf_knn(x.numpy(), width, nprobe, seed)
    return KnnGraph(sims, ids, time.perf_counter() - started, kind)


def _ivf_knn(x: np.ndarray, k: int, nprobe: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate: faiss IVF-flat over the rows, each row's own hit dropped (`fftrain.search.best_hits`)."""
    import faiss

    n, d = x.shape
    # k-means training dominated the time with 4 sqrt(N) lists, 64 points per list and 25 iterations
    # (45 CPU-s at 50K x 512); 2 sqrt(N) lists, 39 points each and 10 iterations keep the graph's F
    nlist = max(1, int(2 * np.sqrt(n)))
    search_index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(n, min(n, 39 * nlist), replace=False)
    search_index.cp.seed = seed
    search_index.cp.niter = 10
    search_index.train(x[np.sort(sample)])
    search_index.nprobe = min(nprobe, nlist)
    search_index.add(x)
    sims, ids = search_index.search(x, k + 1)
    hits = best_hits(torch.from_numpy(sims), torch.from_numpy(ids).to(torch.int64), k, torch.arange(n))
    return tuple(t.numpy() for t in hits)


def cluster(graph: KnnGraph, *, backend: str = "infomap", threshold: float | None = None,
            resolution: float = DEFAULT_RESOLUTION, seed: int = 0) -> np.ndarray:
    """Cluster labels [N] int64 (contiguous from 0, ordered by each cluster's smallest member).
    `threshold` None: the backend's default edge threshold (DEFAULT_THRESHOLDS)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown clustering backend {backend!r}; available: {list(BACKENDS)}")
    threshold = DEFAULT_THRESHOLDS[backend] if threshold is None else threshold
    src, dst, weight = graph.edges(threshold)
    n = graph.num_nodes
    if backend == "components":
        labels = _components(n, src, dst)
    elif backend == "infomap":
        labels = _infomap(n, src, dst, weight, seed)
    else:
        labels = _leiden(n, src, dst, weight, resolution, seed)
    return canonical_labels(labels)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..K-1 in order of each cluster's smallest member (deterministic ids)."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


def _components(n: int, src, dst) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    adjacency = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    return connected_components(adjacency, directed=False)[1]


def _infomap(n: int, src, dst, weight, seed: int) -> np.ndarray:
    import infomap

    im = infomap.Infomap(silent=True)
    im.add_nodes(range(n))
    im.add_links(zip(src.tolist(), dst.tolist(), weight.tolist()))
    result = im.run(options=infomap.Options(two_level=True, flow_model="undirected", seed=seed + 1, num_trials=1))
    labels = np.arange(n, dtype=np.int64) + n  # nodes Infomap leaves out stay singletons
    for node, module in result.modules().items():
        labels[node] = module
    return labels


def _leiden(n: int, src, dst, weight, resolution: float, seed: int) -> np.ndarray:
    import igraph
    import leidenalg

    g = igraph.Graph(n=n, edges=np.stack([src, dst], 1).tolist(), directed=False)
    partition = leidenalg.find_partition(g, leidenalg.CPMVertexPartition, weights=weight.tolist(),
                                         resolution_parameter=resolution, seed=seed)
    return np.asarray(partition.membership, dtype=np.int64)


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Clusters of fewer than `min_size` samples -> -1; the rest renumbered 0..K-1 (order kept)."""
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    keep = sizes >= min_size
    new_id = np.full(len(sizes), -1, dtype=np.int64)
    new_id[keep] = np.arange(int(keep.sum()))
    return np.where(labels >= 0, new_id[np.maximum(labels, 0)], -1)
