"""Training data: shards on disk -> batches of (images, source class, dataset, fused class) on the device.

    from fftrain.data import build_loader
    loader = build_loader(manifest_path, backend="dali", shard_id=rank, num_shards=world,
                          device=device, batch_size=128, seed=0)

Modules: `sharding` (who reads what, pure), `records` (the combined index, start-up checks),
`augment` / `plan` (per-step keys and augmentation), `labels` (source -> dataset, fused on the
device), `dali_pipeline` / `torch_reader` (the two backends), `loader` (Batch, BatchLoader).
DALI is imported only inside the functions that use it.
"""

from .labels import LabelTables
from .loader import Batch, BatchLoader, EndlessBatches, TrainingData, build_loader, build_loader_from_config
from .records import DataError

__all__ = ["Batch", "BatchLoader", "DataError", "EndlessBatches", "LabelTables", "TrainingData", "build_loader",
           "build_loader_from_config"]
