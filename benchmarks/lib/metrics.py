"""Verification metrics of the experiments over all pairs of held-out embeddings."""

from __future__ import annotations


def all_pairs_metrics(emb, y) -> dict:
    """TAR@FAR 1e-3 / 1e-4 over all pairs of L2-normalised embeddings [N, D] and rank-1 identification (first
    image of each identity = gallery); `y` [N] identity per row, each identity's rows contiguous."""
    import torch

    from fftrain.evaluation.metrics import tar_at_far

    sims = emb @ emb.T
    upper = torch.triu_indices(len(y), len(y), offset=1)
    scores = sims[upper[0], upper[1]].numpy()
    same = (y[upper[0]] == y[upper[1]]).numpy()
    out = {f"tar@{far:g}": tar_at_far(scores, same, far).tar for far in (1e-3, 1e-4)}
    first = torch.ones(len(y), dtype=torch.bool)
    first[1:] = y[1:] != y[:-1]
    gallery, probes = first.nonzero().squeeze(1), (~first).nonzero().squeeze(1)
    best = sims[probes][:, gallery].argmax(dim=1)
    out["rank1"] = float((y[gallery][best] == y[probes]).float().mean())
    out["num_negative_pairs"] = int((~same).sum())
    return out
