"""Per-sample loss weights of a training set, indexed by combined-index key.

A dataset may name a `sample_weights` file in its dataset.json (carried into manifest.json by
`recordio_tools build`): a float32 .npy with one weight per image in record order, the shards in
order and each in its .idx order, which is the order of that dataset's keys in the combined
index. Datasets without one weigh every image 1. Loaded with allow_pickle=False.
"""

from __future__ import annotations

import os

import numpy as np

from recordio_tools.manifest import Manifest

from fftrain.data.records import DataError


def _load_one(path: str, num_images: int, name: str) -> np.ndarray:
    try:
        weights = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: sample-weight file of dataset {name!r} not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a .npy array of sample weights ({e})") from None
    if weights.shape != (num_images,) or not np.issubdtype(weights.dtype, np.floating):
        raise DataError(f"{path}: expected {num_images} float weights (one per image of {name!r}), "
                        f"got {weights.dtype} {weights.shape}")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise DataError(f"{path}: weight {weights[bad[0]]} of image {bad[0]} is not a finite number >= 0")
    return weights.astype(np.float32)


def load_sample_weights(manifest: Manifest) -> np.ndarray | None:
    """[num_images] float32 over the combined index, or None when no dataset has weights."""
    if not any(d.sample_weights for d in manifest.datasets):
        return None
    parts = [np.ones(d.num_images, np.float32) if not d.sample_weights else
             _load_one(os.path.join(manifest.root, d.sample_weights), d.num_images, d.name)
             for d in manifest.datasets]
    return np.concatenate(parts)
