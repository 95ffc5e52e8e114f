"""The run's label spaces: source class -> dataset, source class -> fused class, fused class -> dataset.

The shards store the exact source class `c` of every image (docs/ARCHITECTURE.md, label spaces).
The dataset of a sample is `class_dataset[c]` (fixed by the manifest) and its fused class
`label_map[c]`: the identity before fusion, a many-to-one map onto contiguous ids after it. Only
the label map is state (the checkpoint stores it under `CHECKPOINT_KEY`); the dataset of a fused
class is derived from it: the dataset of its smallest source class, as fusion defines it.

Both tables live on the device, so the per-batch lookups are two gathers. The trainer owns the
one instance of a run; the loader holds a reference, so `swap_label_map` (after fusion, or on
resume) takes effect at the next batch without touching the data pipeline.
"""

from __future__ import annotations

import numpy as np
import torch


def class_ids_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """Exact int64 class ids from RecordIO float labels: [B] or [B,1] (flag 0), [B,2] (flag 2,
    float32 id + residual). Torch twin of `recordio_tools.recordio.class_ids_from_labels`."""
    if labels.dim() == 1:
        return labels.long()
    if labels.shape[1] == 1:
        return labels[:, 0].long()
    return labels[:, 0].long() + labels[:, 1].long()


def _as_index_tensor(values, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if tensor.dim() != 1 or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-d integer array, got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor.to(torch.int64)


class LabelSpace:
    """`class_dataset` and `label_map` (both [num_source_classes] int64) on one device, and the
    derived `fused_dataset` ([num_fused_classes] int64)."""

    CHECKPOINT_KEY = "label_map"

    def __init__(self, class_dataset, device: torch.device | str = "cpu", label_map=None):
        self.device = torch.device(device)
        self.class_dataset = _as_index_tensor(class_dataset, "class_dataset").to(self.device)
        self.num_datasets = int(self.class_dataset.max().item()) + 1 if len(self.class_dataset) else 0
        self.label_map = self.class_dataset.new_empty(0)
        self.num_fused_classes = 0
        self.fused_dataset = self.class_dataset.new_empty(0)
        self.swap_label_map(torch.arange(len(self.class_dataset)) if label_map is None else label_map)

    @classmethod
    def from_manifest(cls, manifest, device: torch.device | str = "cpu", label_map=None) -> "LabelSpace":
        return cls(manifest.class_dataset(), device, label_map)

    @property
    def num_source_classes(self) -> int:
        return len(self.class_dataset)

    def swap_label_map(self, label_map) -> None:
        """Replace the source -> fused map. It must cover every source class with contiguous
        fused ids 0..F-1 (each used at least once)."""
        new_map = _as_index_tensor(label_map, "label_map")
        if len(new_map) != self.num_source_classes:
            raise ValueError(f"label_map has {len(new_map)} entries, the training set has "
                             f"{self.num_source_classes} source classes")
        fused = int(new_map.max().item()) + 1 if len(new_map) else 0
        if len(new_map) and int(new_map.min().item()) < 0:
            raise ValueError(f"label_map holds a negative class {int(new_map.min().item())}")
        used = torch.bincount(new_map, minlength=fused) if len(new_map) else new_map
        if bool((used == 0).any()):
            missing = int(torch.nonzero(used == 0)[0, 0].item())
            raise ValueError(f"label_map fused ids are not contiguous: {missing} unused below the maximum {fused - 1}")
        self.label_map = new_map.to(self.device)
        self.num_fused_classes = fused
        smallest = min_source_class(new_map.cpu().numpy(), fused)  # on the host: swaps are rare
        self.fused_dataset = self.class_dataset[torch.from_numpy(smallest).to(self.device)]

    def lookup(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dataset, fused) of int64 source classes already on the device."""
        return self.class_dataset[source], self.label_map[source]

    def checkpoint_template(self, num_source_classes: int) -> dict[str, torch.Tensor]:
        """The replicated tensors a checkpoint holds for the label space, shaped for loading."""
        return {self.CHECKPOINT_KEY: torch.empty(num_source_classes, dtype=torch.int64)}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {self.CHECKPOINT_KEY: self.label_map.cpu().clone()}

    def load_checkpoint_state(self, state: dict) -> None:
        self.swap_label_map(state[self.CHECKPOINT_KEY])


def min_source_class(label_map, num_fused: int) -> np.ndarray:
    """Smallest source class of every fused class ([num_fused] int64); a fused id no source class
    maps to gets `len(label_map) + id` (after every real one)."""
    if label_map is None:
        return np.arange(num_fused, dtype=np.int64)
    lm = np.asarray(label_map, dtype=np.int64)
    if lm.size and (lm.min() < 0 or lm.max() >= num_fused):
        raise ValueError(f"label_map values must lie in [0, {num_fused}), got [{lm.min()}, {lm.max()}]")
    out = np.arange(num_fused, dtype=np.int64) + lm.size
    uniq, first = np.unique(lm, return_index=True)
    out[uniq] = first
    return out


def fused_dataset_of(class_dataset, label_map) -> np.ndarray:
    """Host twin of `LabelSpace.fused_dataset`, for tools that read a checkpoint without a device."""
    label_map = np.asarray(label_map, dtype=np.int64)
    num_fused = int(label_map.max()) + 1 if len(label_map) else 0
    return np.asarray(class_dataset, dtype=np.int64)[min_source_class(label_map, num_fused)]
