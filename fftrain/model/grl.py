"""Gradient reversal and the dataset classifier behind it (FaceFusion's dataset-invariance term).

`grad_reverse(x, lam)` is the identity forward and multiplies the gradient by -lam backward.
`DatasetClassifier` predicts each sample's dataset from its embedding through that layer; its
loss is added to the total as it is (weight 1): the classifier's own parameters descend on it,
the backbone receives -lam times its gradient, i.e. learns to make datasets indistinguishable.

Convention: `loss()` is the mean over the local batch; DDP's gradient averaging turns it into the
mean over the global batch when every rank has the same local batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fftrain.distributed.collectives import scale_grad


def grad_reverse(x: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """y = x; dL/dx = -lam * dL/dy."""
    return scale_grad(x, -lam)


class DatasetClassifier(nn.Module):
    """GRL -> Linear(D, hidden) -> ReLU -> Linear(hidden, num_datasets); hidden=0: one Linear.

    `lam` is a plain attribute so a schedule may change it (0 switches the reversal off while
    the classifier still trains).
    """

    def __init__(self, embedding_size: int, num_datasets: int, *, hidden: int = 256, lam: float = 0.1):
        super().__init__()
        if num_datasets < 1:
            raise ValueError(f"num_datasets must be >= 1, got {num_datasets}")
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0, got {hidden}")
        self.num_datasets = num_datasets
        self.lam = lam
        if hidden:
            self.net = nn.Sequential(nn.Linear(embedding_size, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, num_datasets))
        else:
            self.net = nn.Linear(embedding_size, num_datasets)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Dataset logits [B, num_datasets]."""
        return self.net(grad_reverse(embeddings, self.lam))

    def loss(self, embeddings: torch.Tensor, dataset_ids: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the dataset prediction, mean over the local batch."""
        if dataset_ids.numel() == 0:
            raise ValueError("empty batch: dataset_ids has 0 entries")
        low, high = torch.stack([dataset_ids.min(), dataset_ids.max()]).tolist()
        if low < 0 or high >= self.num_datasets:
            raise ValueError(f"dataset id {low if low < 0 else high} out of range [0, {self.num_datasets})")
        return F.cross_entropy(self.forward(embeddings).float(), dataset_ids)
