"""The replicated part of the network: backbone + gradient-reversal dataset classifier.

Both live in one module so a single DDP wrapper covers them. The dataset classifier always
runs (DDP needs every parameter used each step); before `grl.start_step` its loss is weighted 0.
The class proxies are not here: they are the sharded Partial-FC head, outside DDP.
"""

from __future__ import annotations

import torch
from torch import nn

from fftrain.model.backbones import build_backbone
from fftrain.config import ModelConfig, GRLConfig
from fftrain.model.grl import DatasetClassifier


class EmbeddingModel(nn.Module):
    def __init__(self, model_cfg: ModelConfig, grl_cfg: GRLConfig, num_datasets: int):
        super().__init__()
        self.backbone = build_backbone(model_cfg.backbone, embedding_size=model_cfg.embedding_size,
                                       dropout=model_cfg.dropout, grad_checkpoint=model_cfg.grad_checkpoint)
        self.dataset_classifier = DatasetClassifier(model_cfg.embedding_size, num_datasets,
                                                    hidden=grl_cfg.hidden, lam=grl_cfg.weight)

    @classmethod
    def from_parts(cls, backbone: nn.Module, dataset_classifier: DatasetClassifier) -> "EmbeddingModel":
        """The pair around a backbone built elsewhere (the feature-level experiments' MLP)."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.backbone, model.dataset_classifier = backbone, dataset_classifier
        return model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, D] (fp32) and dataset logits [B, num_datasets] (through gradient reversal)."""
        embeddings = self.backbone(images).float()
        return embeddings, self.dataset_classifier(embeddings)
