"""Reading pieces of a checkpoint in one process, no group (eval, export, fuse, audit, pseudo-label)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fftrain.data.label_space import fused_dataset_of
from fftrain.training.checkpoint.dcp_io import safe_dcp_load
from fftrain.training.checkpoint.checks import require_fields
from fftrain.training.checkpoint.layout import FC_WEIGHT, LABEL_MAP, META_FILE, MODEL, merge_extras, split_tensors
from fftrain.training.checkpoint.safe_read import check_complete

def meta_file(path: str) -> str:
    return os.path.join(path, META_FILE)


def load_partial(path: str, state: dict) -> dict:
    """Fill the given subset of a checkpoint's state (templates of the right shapes) in one process."""
    check_complete(path)
    tensors, templates = split_tensors(state)
    safe_dcp_load(tensors, path, None)
    state.update(tensors)
    merge_extras(state, path, templates)
    return state


def load_backbone_from_checkpoint(path: str) -> torch.nn.Module:
    """The trained backbone (eval mode, CPU) rebuilt from the config recorded in the checkpoint."""
    from fftrain.config import config_from_dict
    from fftrain.model.embedding import EmbeddingModel

    meta = check_complete(path)
    require_fields(meta, ("config", "num_datasets"), meta_file(path))
    cfg = config_from_dict(meta["config"])
    model = EmbeddingModel(cfg.model, cfg.grl, meta["num_datasets"])
    state = load_partial(path, {MODEL: model.state_dict()})
    model.load_state_dict(state[MODEL])
    return model.backbone.eval()


def load_proxies_from_checkpoint(path: str) -> torch.Tensor:
    """All class proxies [C_fused, D] of a checkpoint, gathered into one tensor."""
    meta = check_complete(path)
    require_fields(meta, ("num_classes_fused", "embedding_size"), meta_file(path))
    weight = torch.empty(meta["num_classes_fused"], meta["embedding_size"])
    return load_partial(path, {"sharded": {FC_WEIGHT: weight}})["sharded"][FC_WEIGHT]


@dataclass
class ProxiesAndLabels:
    """What the offline tools read from a checkpoint: every class proxy and the label space."""

    meta: dict
    proxies: torch.Tensor
    """[C_fused, D] as saved (not normalised)."""
    label_map: torch.Tensor
    """[C_src] int64 source class -> fused class."""
    fused_dataset: torch.Tensor
    """[C_fused] int64 dataset of each fused class (derived from the label map)."""


def load_proxies_and_labels(path: str) -> ProxiesAndLabels:
    """One process, no group: the proxies and label space of a complete checkpoint."""
    meta = check_complete(path)
    require_fields(meta, ("num_classes_fused", "embedding_size", "num_classes_source", "datasets"), meta_file(path))
    state = load_partial(path, {"sharded": {FC_WEIGHT: torch.empty(meta["num_classes_fused"], meta["embedding_size"])},
                                LABEL_MAP: torch.empty(meta["num_classes_source"], dtype=torch.int64)})
    class_dataset = [i for i, d in enumerate(meta["datasets"]) for _ in range(d["num_classes"])]
    label_map = state[LABEL_MAP]
    return ProxiesAndLabels(meta, state["sharded"][FC_WEIGHT], label_map,
                            torch.from_numpy(fused_dataset_of(class_dataset, label_map)))

