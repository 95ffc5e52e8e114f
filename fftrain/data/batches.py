"""What the trainer iterates: `BatchLoader` turns a reader's stream of `RawBatch`es into `Batch`es.

A reader (`dali_pipeline`, `torch_reader`) hands over decoded images and host-side source ids;
the loader moves them to the device and looks up each sample's dataset and fused class in the
run's `LabelSpace` (the map current when the batch is yielded). Resume: a batch carries (epoch,
step); a loader built at `epoch=batch.epoch, start_step=batch.step + 1` continues with the batches
the uninterrupted run would have read next. A step equal to the epoch length is normalised to the
start of the next epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from fftrain.data.label_space import LabelSpace
from fftrain.data.sharding import check_step


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

    def __init__(self, stream: StreamFactory, *, steps: int, labels: LabelSpace, device: torch.device,
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


class EndlessBatches:
    """Batches epoch after epoch, for a loop counted in steps (`next(iter(stream))` never ends)."""

    def __init__(self, loader: BatchLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield from self.loader

    def close(self) -> None:
        self.loader.close()
