"""Training data: shards on disk -> batches of (images, source class, dataset, fused class) on the device.

    from fftrain.data import build_loader
    loader = build_loader(manifest_path, backend="dali", shard_id=rank, num_shards=world,
                          device=device, batch_size=128, seed=0)

Modules, bottom up (each imports only those above it):
- `sharding` (who reads what, pure), `records` (the combined index, start-up checks, reads by key),
  `weights` (per-sample loss weights), `augment` / `plan` (per-step keys and augmentation);
- `label_space` (source -> dataset, source -> fused, fused -> dataset, on the device);
- `batches` (Batch, RawBatch, BatchLoader), `read_spec` (ReadSpec, and `prepare`: the checks, once);
- `dali_pipeline` / `torch_reader` (the two readers: a Prepared, a ReadSpec and a device each);
- `loader` (`build_loader`, `TrainingData`: picks the reader).
DALI is imported only inside the functions that use it.
"""

from fftrain.data.label_space import LabelSpace
from fftrain.data.batches import Batch, BatchLoader, EndlessBatches
from fftrain.data.loader import TrainingData, build_loader, build_loader_from_config
from fftrain.data.records import DataError

__all__ = ["Batch", "BatchLoader", "DataError", "EndlessBatches", "LabelSpace", "TrainingData", "build_loader",
           "build_loader_from_config"]
