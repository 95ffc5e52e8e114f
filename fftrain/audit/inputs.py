"""What `fftrain audit` reads, checked before the first image is embedded.

Each problem a user can cause is one `AuditError` naming the file: a checkpoint that is not
complete or whose backbone, proxies and recorded embedding size disagree, a manifest whose
datasets and class counts are not the ones the checkpoint was trained on, a verification file
that is not a pair file or holds no pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from fftrain.errors import UserError


class AuditError(UserError, ValueError):
    """Bad audit input; the CLI prints it as one line and exits with status 2."""


@dataclass
class CheckpointView:
    """What the audit takes from a checkpoint: the backbone and its class proxies."""

    path: str
    backbone: torch.nn.Module
    embedding_size: int
    proxies: torch.Tensor
    """[C_fused, D] float32, as saved (not normalised)."""
    label_map: np.ndarray
    """[C_src] int64 source class -> fused class."""
    fused_dataset: np.ndarray
    """[C_fused] int64 dataset of each fused class."""
    datasets: list[dict]
    """name, num_classes of each dataset, in class-offset order."""
    fused: bool


def load_checkpoint_view(path: str) -> CheckpointView:
    from fftrain.training.checkpoint import CheckpointError, load_backbone_from_checkpoint, load_proxies_and_labels, read_meta

    if not os.path.isdir(path):
        raise AuditError(f"{path}: checkpoint directory not found")
    try:
        meta = read_meta(path)
        dim = int(meta["embedding_size"])
        backbone = load_backbone_from_checkpoint(path)
        saved = load_proxies_and_labels(path)
    except CheckpointError as e:
        raise AuditError(str(e)) from None
    except (KeyError, ValueError, RuntimeError) as e:  # a stored tensor of another shape
        raise AuditError(f"{path}: checkpoint does not match its own meta.json (embedding_size={meta.get('embedding_size')}, "
                         f"num_classes_fused={meta.get('num_classes_fused')}): {_first_line(e)}") from None
    out_dim = _output_dim(backbone)
    if out_dim != dim:
        raise AuditError(f"{path}: the backbone gives {out_dim}-d embeddings but the checkpoint's embedding_size "
                         f"and proxies are {dim}-d")
    return CheckpointView(path=path, backbone=backbone, embedding_size=dim,
                          proxies=saved.proxies.float(), label_map=saved.label_map.numpy().astype(np.int64),
                          fused_dataset=saved.fused_dataset.numpy().astype(np.int64),
                          datasets=list(meta["datasets"]), fused=bool(meta.get("fused")))


def _first_line(e: Exception) -> str:
    """DCP wraps the cause in a per-rank traceback; its last line says what did not fit."""
    text = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return text[-1][:300] if text else type(e).__name__


@torch.no_grad()
def _output_dim(backbone: torch.nn.Module) -> int:
    size = int(getattr(backbone, "input_size", 112))
    return int(backbone.eval()(torch.zeros(1, 3, size, size)).shape[1])


def load_matching_manifest(path: str, checkpoint: CheckpointView):
    """The training-set manifest, refused unless its datasets (names, class counts, order) are the
    checkpoint's: the class centres must line up with the proxies' label space."""
    from recordio_tools.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(path)
    except ManifestError as e:
        raise AuditError(str(e)) from None
    have = [(d.name, d.num_classes) for d in manifest.datasets]
    want = [(d["name"], int(d["num_classes"])) for d in checkpoint.datasets]
    if have != want:
        diff = next(((h, w) for h, w in zip(have, want) if h != w), None)
        detail = (f"first difference: manifest {diff[0]} vs checkpoint {diff[1]}" if diff
                  else f"{len(have)} datasets vs the checkpoint's {len(want)}")
        raise AuditError(f"{path}: manifest does not match checkpoint {checkpoint.path} "
                         f"(datasets and class counts must be the ones it was trained on; {detail})")
    return manifest


def check_verification_files(paths: list[str]) -> list[str]:
    """Each path must be a readable pair file with at least one pair (read with the safe unpickler)."""
    from recordio_tools.verification_bin import VerificationBinError, read_verification_bin

    for path in paths:
        try:
            images, issame = read_verification_bin(path)
        except VerificationBinError as e:
            raise AuditError(str(e)) from None
        if not issame:
            raise AuditError(f"{path}: verification file holds no pairs")
    return list(paths)
