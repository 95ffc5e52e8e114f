"""Per-sample loss weights of a training set, indexed by combined-index key.

The file format and the loader are recordio_tools.manifest's (`load_sample_weights`); here a bad
file is a DataError, as every other problem with the training data is.
"""

from __future__ import annotations

import numpy as np

from recordio_tools import manifest as manifests
from recordio_tools.manifest import Manifest, ManifestError

from fftrain.data.records import DataError


def load_sample_weights(manifest: Manifest) -> np.ndarray | None:
    """[num_images] float32 over the combined index, or None when no dataset has weights."""
    try:
        return manifests.load_sample_weights(manifest)
    except ManifestError as e:
        raise DataError(str(e)) from None
