"""The trainer's view of the data: `build_loader(...)` -> `BatchLoader` yielding `Batch`es.

    loader = build_loader("data/train/manifest.json", backend="dali", shard_id=ctx.rank,
                          num_shards=ctx.world_size, device=ctx.device, batch_size=128, seed=0,
                          epoch=0, start_step=0)
    for epoch in range(...):
        for batch in loader:            # one epoch: len(loader) steps, the same on every rank
            ...                         # batch.images [B,3,112,112] in [-1,1], batch.fused [B]
    loader.labels.swap_label_map(new_map)   # after fusion; the next batch carries fused ids

For a step-counted loop, `TrainingData.from_config(cfg, ctx, manifest)` checks the data once and
`make_loader(start_step=global_step)` returns an endless stream (`EndlessBatches`).

Backends ('dali': `dali_pipeline.py`, 'torch': `torch_reader.py`) produce the same images,
labels and order for the same (seed, epoch, step, rank) with the default global order: both
read `sharding.rank_batches` of the epoch's permutation and draw augmentation from
`augment.step_params`. Rank and world size enter as arguments; nothing reads the environment.

Resume: a batch carries (epoch, step); a run resumed with `epoch=batch.epoch,
start_step=batch.step + 1` (or `loader.position` at checkpoint time) continues with the
batches the uninterrupted run would have read next. A step equal to the epoch length is
normalised to the start of the next epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from recordio_tools.manifest import Manifest, load_manifest, training_view

from ..config import ConfigError
from .labels import LabelTables
from .records import DataError, RecordSet
from .weights import load_sample_weights
from .sharding import check_step, epoch_position, steps_per_epoch

BACKENDS = ("dali", "torch")


@dataclass
class Batch:
    """One rank's batch on the training device."""

    images: torch.Tensor   # [B, 3, H, W] float32 in [-1, 1] (channels-last memory format if asked)
    source: torch.Tensor   # [B] int64 exact source class (offset of its dataset + local label)
    dataset: torch.Tensor  # [B] int64 class_dataset[source]
    fused: torch.Tensor    # [B] int64 label_map[source], with the map current when yielded
    epoch: int
    step: int              # step inside the epoch, from 0; resume at (epoch, step + 1)
    keys: np.ndarray | None = None  # [B] combined-index keys (global order), for per-sample weights


@dataclass
class RawBatch:
    """What a reader hands the loader: images already decoded, labels still on the host."""

    images: torch.Tensor   # [B, 3, H, W] float32, on the device (DALI mixed) or the host
    source: np.ndarray     # [B] int64
    epoch: int
    step: int
    keys: np.ndarray | None = None  # [B] combined-index keys; None where the reader does not know them


StreamFactory = Callable[[int, int], Iterator[RawBatch]]


class BatchLoader:
    """Yields one epoch of `Batch`es per iteration, from a reader's endless stream of RawBatches.

    `stream(epoch, step)` must yield the RawBatches of (epoch, step), (epoch, step + 1), ... across
    epoch ends. `close` is called when the stream is replaced or the loader is closed.
    """

    def __init__(self, stream: StreamFactory, *, steps: int, labels: LabelTables, device: torch.device,
                 epoch: int = 0, start_step: int = 0, channels_last: bool = False,
                 close: Callable[[], None] | None = None):
        self.steps_per_epoch = steps
        self.labels = labels
        self.device = torch.device(device)
        self.channels_last = channels_last
        self._factory = stream
        self._close_reader = close
        self._stream: Iterator[RawBatch] | None = None
        self.epoch, self.step = normalise_position(epoch, start_step, steps)

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, step) of the next batch this loader yields."""
        return self.epoch, self.step

    def set_position(self, epoch: int, step: int = 0) -> None:
        """Jump: the next batch is (epoch, step). Restarts the reader's stream."""
        self.epoch, self.step = normalise_position(epoch, step, self.steps_per_epoch)
        self._drop_stream()

    def _drop_stream(self) -> None:
        if self._stream is not None and hasattr(self._stream, "close"):
            self._stream.close()
        self._stream = None

    def __iter__(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch; the next iteration starts the next epoch."""
        while True:
            if self._stream is None:
                self._stream = self._factory(self.epoch, self.step)
            raw = next(self._stream)
            if (raw.epoch, raw.step) != (self.epoch, self.step):
                raise RuntimeError(f"reader out of step: got ({raw.epoch}, {raw.step}), "
                                   f"expected ({self.epoch}, {self.step})")
            batch = self._to_batch(raw)
            last = self.step + 1 == self.steps_per_epoch
            self.epoch, self.step = (self.epoch + 1, 0) if last else (self.epoch, self.step + 1)
            yield batch
            if last:
                return

    def _to_batch(self, raw: RawBatch) -> Batch:
        images = raw.images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        source = torch.from_numpy(raw.source).to(self.device, non_blocking=True)
        dataset, fused = self.labels.lookup(source)
        return Batch(images, source, dataset, fused, raw.epoch, raw.step, raw.keys)

    def close(self) -> None:
        self._drop_stream()
        if self._close_reader is not None:
            self._close_reader()

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def normalise_position(epoch: int, step: int, steps: int) -> tuple[int, int]:
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if step == steps:
        return epoch + 1, 0
    check_step(step, steps)
    return epoch, step


@dataclass
class Prepared:
    """What every backend needs, checked once before the first step."""

    manifest: Manifest
    records: RecordSet
    labels: LabelTables
    steps: int
    sample_weights: np.ndarray | None = None  # [N] per combined-index key (weights.py); None: all 1


def prepare(manifest: str | Manifest | Prepared, *, num_shards: int, batch_size: int, device: torch.device,
            label_map=None, validate: bool = True, seed: int = 0, on_bad_record: str = "stop") -> Prepared:
    """Load and check the manifest and its shards (errors name the file), build the label tables.
    A `Prepared` passes through (its checks are done; its label tables are shared). `on_bad_record`:
    what reading a bad record mid-run does, 'stop' or 'skip' (`records.RecordSet.read_batch`)."""
    if isinstance(manifest, Prepared):
        if label_map is not None:
            raise ValueError("a prepared training set shares its label tables: swap the map there, not per loader")
        return Prepared(manifest.manifest, manifest.records, manifest.labels,
                        steps_per_epoch(len(manifest.records), num_shards, batch_size), manifest.sample_weights)
    if not isinstance(manifest, Manifest):
        manifest = training_view(load_manifest(manifest))
    records = RecordSet(manifest, on_bad_record)
    if validate:
        records.validate(seed=seed)
    try:
        steps = steps_per_epoch(len(records), num_shards, batch_size)
    except ValueError as e:
        raise ConfigError(f"data.batch_size: {e} (the training set {manifest.root})") from None
    labels = LabelTables.from_manifest(manifest, device, label_map)
    return Prepared(manifest, records, labels, steps, load_sample_weights(manifest))


def build_loader(manifest: str | Manifest | Prepared, *, backend: str = "dali", shard_id: int, num_shards: int,
                 device: torch.device | str, batch_size: int, seed: int, epoch: int = 0, start_step: int = 0,
                 **options) -> BatchLoader:
    """A BatchLoader over `manifest` for rank `shard_id` of `num_shards`, on `device`.

    backend: 'dali' (DALI pipeline; GPU decode when `device` is CUDA) or 'torch' (DataLoader
    fallback). `options` go to `build_dali_loader` / `build_torch_loader` (flip, strong_augment,
    num_threads / num_workers, channels_last, label_map, shuffle, validate, ...).
    """
    device = torch.device(device)
    if backend == "dali":
        from .dali_pipeline import build_dali_loader

        device_id = device.index if device.type == "cuda" else None
        if device.type == "cuda" and device_id is None:
            device_id = torch.cuda.current_device()
        return build_dali_loader(manifest, shard_id=shard_id, num_shards=num_shards, device_id=device_id,
                                 batch_size=batch_size, seed=seed, epoch=epoch, start_step=start_step, **options)
    if backend == "torch":
        from .torch_reader import build_torch_loader

        return build_torch_loader(manifest, shard_id=shard_id, num_shards=num_shards, device=device,
                                  batch_size=batch_size, seed=seed, epoch=epoch, start_step=start_step, **options)
    raise ValueError(f"unknown data backend {backend!r}; available: {list(BACKENDS)}")


def build_loader_from_config(cfg, ctx, *, manifest: str | Manifest | Prepared | None = None, epoch: int = 0,
                             start_step: int = 0, label_map=None) -> BatchLoader:
    """From a TrainConfig (`cfg.data`, `cfg.seed`, `cfg.model.channels_last`) and a DistContext."""
    data = cfg.data
    workers = {"num_threads": max(data.num_workers, 1)} if data.reader == "dali" else {"num_workers": data.num_workers}
    return build_loader(manifest if manifest is not None else data.manifest, backend=data.reader,
                        shard_id=ctx.rank, num_shards=ctx.world_size, device=ctx.device,
                        batch_size=data.batch_size, seed=cfg.seed, epoch=epoch, start_step=start_step,
                        strong_augment=data.augment, channels_last=cfg.model.channels_last,
                        label_map=label_map, order=data.order, **workers)


class EndlessBatches:
    """Batches epoch after epoch, for a loop counted in steps (`next(iter(stream))` never ends)."""

    def __init__(self, loader: BatchLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield from self.loader

    def close(self) -> None:
        self.loader.close()


@dataclass
class TrainingData:
    """The data side of a run, checked once at start-up: the manifest, the label tables the
    trainer swaps at fusion, and `make_loader(start_step)` for an endless stream of this rank's
    batches from a global step on (fresh runs: 0; resumed runs: the checkpoint's step)."""

    cfg: object
    ctx: object
    prepared: Prepared

    @classmethod
    def from_config(cls, cfg, ctx, manifest: str | Manifest | None = None, label_map=None) -> "TrainingData":
        prepared = prepare(manifest if manifest is not None else cfg.data.manifest, num_shards=ctx.world_size,
                           batch_size=cfg.data.batch_size, device=ctx.device, label_map=label_map, seed=cfg.seed,
                           on_bad_record=cfg.data.bad_records)
        if prepared.sample_weights is not None and cfg.data.order != "global":
            raise DataError(f"{prepared.manifest.root}: the training set has per-sample weights, which need "
                            f"data.order=global (got data.order={cfg.data.order})")
        return cls(cfg, ctx, prepared)

    def sample_weight(self, batch: Batch) -> torch.Tensor | None:
        """[B] float32 loss weight of each sample of `batch` on its device; None when the set has none."""
        if self.prepared.sample_weights is None:
            return None
        if batch.keys is None:
            raise DataError("per-sample weights need the batch's record keys (data.order=global)")
        return torch.from_numpy(self.prepared.sample_weights[batch.keys]).to(batch.fused.device)

    @property
    def manifest(self) -> Manifest:
        return self.prepared.manifest

    @property
    def labels(self) -> LabelTables:
        return self.prepared.labels

    @property
    def steps_per_epoch(self) -> int:
        return self.prepared.steps

    @property
    def num_source_classes(self) -> int:
        return self.labels.num_source_classes

    @property
    def num_datasets(self) -> int:
        return len(self.manifest.datasets)

    @property
    def num_records(self) -> int:
        return len(self.prepared.records)

    def make_loader(self, start_step: int = 0, position: tuple[int, int] | None = None) -> EndlessBatches:
        """This rank's batches from global step `start_step` on: (epoch, step) = divmod(start_step, steps);
        or from `position` = (epoch, step in the epoch) when given (a resume with another global batch)."""
        epoch, step = position if position is not None else epoch_position(start_step, self.steps_per_epoch)
        return EndlessBatches(build_loader_from_config(self.cfg, self.ctx, manifest=self.prepared, epoch=epoch,
                                                       start_step=step))
