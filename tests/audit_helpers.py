"""A checkpoint for audit tests without training: the demo's tiny backbone (random weights, or given
proxies) saved by `fftrain.training.checkpoint.save_checkpoint` in one process, in the trainer's layout.

    path = make_checkpoint(tmp_path / "ckpt", manifest, proxies=None, embedding_size=32)
"""

from __future__ import annotations

import copy

import torch

from fftrain.training.checkpoint import ShardedRows, save_checkpoint
from fftrain.config import config_from_dict, config_to_dict
from fftrain.demo import DEMO_CONFIG
from fftrain.distributed import single_process_context
from fftrain.model.embedding import EmbeddingModel


def make_checkpoint(root, manifest, *, proxies: torch.Tensor | None = None, embedding_size: int = 32,
                    label_map: torch.Tensor | None = None, seed: int = 0) -> str:
    values = copy.deepcopy(DEMO_CONFIG)
    values["model"]["embedding_size"] = embedding_size
    values["data"]["manifest"] = manifest.root
    cfg = config_from_dict(values)
    torch.manual_seed(seed)
    model = EmbeddingModel(cfg.model, cfg.grl, len(manifest.datasets))
    num_src = manifest.num_classes
    label_map = torch.arange(num_src) if label_map is None else label_map
    num_fused = int(label_map.max()) + 1
    if proxies is None:
        proxies = torch.randn(num_fused, embedding_size)
    meta = {"backbone": cfg.model.backbone, "embedding_size": embedding_size, "num_classes_source": num_src,
            "num_datasets": len(manifest.datasets),
            "datasets": [{"name": d.name, "num_classes": d.num_classes} for d in manifest.datasets],
            "num_classes_fused": num_fused, "fused": num_fused < num_src, "phase": "dail",
            "config": config_to_dict(cfg)}
    return save_checkpoint(str(root), 1, ctx=single_process_context(),
                           replicated={"model": model.state_dict(), "label_map": label_map},
                           sharded={"fc_weight": ShardedRows(proxies.float().clone(), num_fused)},
                           meta=meta, rank_state={}, keep_last=0)
