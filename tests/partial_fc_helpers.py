"""The Partial-FC test problem: global float64 data that the head's tests and the sample-weight tests
split across ranks and compare with a single-process reference."""

from __future__ import annotations

import torch

D, D_IN = 8, 6


def make_problem(seed, num_classes, global_batch, *, num_datasets=3, label_pool=None, label_datasets=None):
    """Global data in float64: inputs, backbone P, proxies W, labels and the class->dataset table.

    Labels are drawn from `label_pool`, or from the classes of `label_datasets`, or from all."""
    g = torch.Generator().manual_seed(seed)
    class_dataset = torch.randint(0, num_datasets, (num_classes,), generator=g)
    pool = torch.arange(num_classes) if label_pool is None else torch.as_tensor(label_pool)
    if label_datasets is not None:
        pool = torch.isin(class_dataset, torch.tensor(label_datasets)).nonzero().squeeze(1)
    labels = pool[torch.randint(0, len(pool), (global_batch,), generator=g)]
    return {
        "inp": torch.randn(global_batch, D_IN, generator=g, dtype=torch.float64),
        "P": torch.randn(D_IN, D, generator=g, dtype=torch.float64),
        "W": torch.randn(num_classes, D, generator=g, dtype=torch.float64),
        "labels": labels,
        "class_dataset": class_dataset,
    }
