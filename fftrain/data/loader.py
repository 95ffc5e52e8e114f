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

Resume and the (epoch, step) of each batch: `batches.py`. What a reader is asked for: `read_spec.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from recordio_tools.manifest import Manifest

from fftrain.data.batches import Batch, BatchLoader, EndlessBatches
from fftrain.data.label_space import LabelSpace
from fftrain.data.read_spec import Prepared, ReadSpec, prepare
from fftrain.data.records import DataError
from fftrain.data.sharding import epoch_position

BACKENDS = ("dali", "torch")
_SPEC_FIELDS = {f.name for f in dataclasses.fields(ReadSpec)}
_PREPARE_OPTIONS = ("label_map", "validate")


def build_loader(manifest: str | Manifest | Prepared, *, backend: str = "dali", shard_id: int, num_shards: int,
                 device: torch.device | str, batch_size: int, seed: int, epoch: int = 0, start_step: int = 0,
                 **options) -> BatchLoader:
    """A BatchLoader over `manifest` for rank `shard_id` of `num_shards`, on `device`.

    backend: 'dali' (DALI pipeline; GPU decode when `device` is CUDA) or 'torch' (DataLoader
    fallback). `options`: the `ReadSpec` fields (order, flip, strong_augment, shuffle, prefetch,
    image_size, channels_last), `label_map` and `validate` for `prepare`, and the backend's own
    worker settings (DALI: num_threads, initial_fill; torch: num_workers).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown data backend {backend!r}; available: {list(BACKENDS)}")
    device = torch.device(device)
    spec = ReadSpec(shard_id=shard_id, num_shards=num_shards, batch_size=batch_size, seed=seed, epoch=epoch,
                    start_step=start_step, **{k: options.pop(k) for k in list(options) if k in _SPEC_FIELDS})
    prepared = prepare(manifest, num_shards=num_shards, batch_size=batch_size, device=device, seed=seed,
                       **{k: options.pop(k) for k in _PREPARE_OPTIONS if k in options})
    if backend == "dali":
        from fftrain.data.dali_pipeline import build_dali_loader

        return build_dali_loader(prepared, spec, device, **options)
    from fftrain.data.torch_reader import build_torch_loader

    return build_torch_loader(prepared, spec, device, **options)


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


@dataclass
class TrainingData:
    """The data side of a run, checked once at start-up: the manifest, the label space the
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
    def labels(self) -> LabelSpace:
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
