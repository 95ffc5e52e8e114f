"""Score calibration with the class proxies as the anchor set (DAO, from the IDA paper's
reference-based support-set estimation), reported beside the plain cosine.

    scores = dao_scores(emb1, emb2, proxies, k=10, tau=1.0)               # [N] pair scores
    report = evaluate_dao(emb1, emb2, issame, proxies)                    # DAO vs cosine accuracy

For a pair of L2-normalised embeddings f1, f2 and the L2-normalised proxies (rows of the FC
weight), let s_i1..s_ik be the k highest proxy similarities of f_i (`fftrain.search.top_k`). Then

    DAO(f1, f2) = e^{tau <f1,f2>} * (1 / sum_k e^{tau s1_k} + 1 / sum_k e^{tau s2_k})

A face in a dense region of the identity space (many near proxies) needs a higher cosine to be
called "same". Evaluated as log-sum-exp (e^{tau c - lse_1} + e^{tau c - lse_2}): the same value,
no overflow for a large tau.

Sharded proxies (training): pass each rank its own rows and the group; every rank takes the
top-k of its shard and the per-rank top-k lists are all-gathered and merged, which gives the
global top-k without moving the proxies.
"""

from __future__ import annotations

import numpy as np
import torch

from fftrain.distributed import all_gather_object
from fftrain.evaluation.metrics import N_FOLDS, kfold_accuracy, l2_normalize
from fftrain.search import top_k, unit_rows

DEFAULT_K = 10
DEFAULT_TAU = 1.0


def _as_float32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def proxy_topk_similarities(embeddings, proxies, k: int = DEFAULT_K, *, group=None) -> np.ndarray:
    """[N, k] highest cosine similarities of each embedding to the proxies, highest first.

    `embeddings` [N, D] and `proxies` [C, D] (numpy or torch) are L2-normalised here and searched
    on the proxies' device (`fftrain.search.top_k`, its 'auto' backend). With a group, `proxies` are this rank's shard (possibly fewer
    than k rows, or none) and the result is the top-k over all ranks' shards.
    """
    if k < 1:
        raise ValueError(f"k={k}: need at least one neighbour")
    queries = unit_rows(_as_float32(embeddings))
    if isinstance(proxies, torch.Tensor):
        proxies = proxies.detach()
    else:
        proxies = torch.from_numpy(_as_float32(proxies))
    if proxies.numel() == 0:
        proxies = proxies.reshape(-1, queries.shape[1])
    if proxies.ndim != 2:
        raise ValueError(f"expected proxies of shape [C, D], got {tuple(proxies.shape)}")
    n_local = int(proxies.shape[0])
    if n_local and proxies.shape[1] != queries.shape[1]:
        raise ValueError(f"proxies have dimension {proxies.shape[1]}, embeddings {queries.shape[1]}")
    k_local = min(k, n_local)
    if k_local == 0:
        local = np.zeros((queries.shape[0], 0))
    else:
        sims, _ = top_k(queries.to(proxies.device), unit_rows(proxies), k_local)
        local = sims.cpu().numpy().astype(np.float64)
    parts = all_gather_object(local, group)
    merged = np.concatenate(parts, axis=1)
    total = sum(int(p.shape[1]) for p in parts)
    if total < k:
        raise ValueError(f"k={k} nearest proxies requested but the anchor set has only {total} proxies")
    return -np.sort(-merged, axis=1)[:, :k]


def log_density(topk_sims: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """log sum_k e^{tau s_k} per row (the local-density term, in log space)."""
    z = tau * np.asarray(topk_sims, dtype=np.float64)
    top = np.max(z, axis=1, keepdims=True)
    return (top + np.log(np.sum(np.exp(z - top), axis=1, keepdims=True)))[:, 0]


def dao_from_parts(cosine: np.ndarray, topk1: np.ndarray, topk2: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """DAO scores from the pair cosines and each side's top-k proxy similarities."""
    tc = tau * np.asarray(cosine, dtype=np.float64)
    return np.exp(tc - log_density(topk1, tau)) + np.exp(tc - log_density(topk2, tau))


def dao_scores(emb1, emb2, proxies, k: int = DEFAULT_K, tau: float = DEFAULT_TAU, *, group=None) -> np.ndarray:
    """DAO(f1, f2) for each pair (rows of `emb1`, `emb2`), with the proxies as anchors."""
    e1 = l2_normalize(_as_float32(emb1))
    e2 = l2_normalize(_as_float32(emb2))
    if e1.shape != e2.shape:
        raise ValueError(f"emb1 {e1.shape} and emb2 {e2.shape} differ")
    topk = proxy_topk_similarities(np.concatenate([e1, e2]), proxies, k, group=group)
    cosine = np.einsum("ij,ij->i", e1, e2)
    return dao_from_parts(cosine, topk[: e1.shape[0]], topk[e1.shape[0]:], tau)


def evaluate_dao(emb1, emb2, issame, proxies, *, k: int = DEFAULT_K, tau: float = DEFAULT_TAU,
                 n_folds: int = N_FOLDS, group=None) -> dict:
    """10-fold best-threshold accuracy of the DAO score and of the plain cosine on the same pairs.

    Both use every distinct threshold of the training folds (`kfold_accuracy(thresholds=None)`),
    so the two numbers are comparable with each other (the cosine one can differ slightly from
    insightface's 0.01-step distance grid).
    """
    e1 = l2_normalize(_as_float32(emb1))
    e2 = l2_normalize(_as_float32(emb2))
    cosine = np.einsum("ij,ij->i", e1, e2)
    dao = dao_scores(e1, e2, proxies, k, tau, group=group)
    dao_folds = kfold_accuracy(dao, issame, None, higher_is_same=True, n_folds=n_folds)
    cos_folds = kfold_accuracy(cosine, issame, None, higher_is_same=True, n_folds=n_folds)
    return {"dao_accuracy": dao_folds.accuracy, "dao_std": dao_folds.std,
            "dao_cosine_accuracy": cos_folds.accuracy, "dao_cosine_std": cos_folds.std,
            "dao_k": k, "dao_tau": tau}
