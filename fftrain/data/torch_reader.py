"""DataLoader fallback reader, for machines without DALI: same records, order and outputs.

    loader = build_torch_loader(prepared, ReadSpec(shard_id=rank, num_shards=world, batch_size=128, seed=0),
                                torch.device("cpu"), num_workers=2)

It follows the DALI pipeline's global order exactly: the same `plan.plan_stream` (keys and
augmentation parameters per step), records read by key from the same shards, JPEGs decoded with
PIL (libjpeg-turbo, the decoder DALI's CPU mode uses), flipped and normalised with the same
arithmetic. Each DataLoader item is one whole batch, so a worker process decodes a batch while
the trainer runs on the previous ones; for CUDA the workers hand over uint8 pixels and the
normalisation runs on the GPU. With the basic pipeline (flip only) its images equal the
DALI CPU pipeline's to float rounding; with strong augmentation they agree in distribution (PIL
and DALI resize differ by a few grey levels, see `augment`).
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


from fftrain.data.augment import apply_numpy
from fftrain.data.batches import BatchLoader, RawBatch
from fftrain.data.plan import BatchPlan, plan_stream
from fftrain.data.read_spec import Prepared, ReadSpec
from fftrain.data.records import DataError, RecordSet



def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1], with the float32 arithmetic of DALI's
    crop_mirror_normalize (mean = std = 127.5). Runs where `images` is: in the worker processes for
    CPU training, on the GPU after the copy for CUDA (a quarter of the bytes cross the bus)."""
    planar = images.permute(0, 3, 1, 2).contiguous().float()  # permute the uint8s: 4x fewer bytes to move
    return planar.sub_(127.5).mul_(1.0 / 127.5)


def decode_jpeg(jpeg: np.ndarray, records: RecordSet, key: int) -> np.ndarray:
    """RGB uint8 HWC; a JPEG that does not decode raises DataError naming the shard and key."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpeg.tobytes())) as image:
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken data
        raise DataError(f"{records.describe(key)}: the JPEG does not decode ({type(e).__name__}: {e}); "
                        f"{records.verify_hint()}") from None


class PlanDataset(Dataset):
    """Maps a BatchPlan to (images, source [B] int64, epoch, step); images are float32 [B,3,S,S]
    in [-1, 1] when `normalised`, else the flipped uint8 pixels [B,S,S,3]."""

    def __init__(self, records: RecordSet, image_size: int, strong: bool, normalised: bool):
        self.records, self.image_size, self.strong, self.normalised = records, image_size, strong, normalised

    def __getitem__(self, plan: BatchPlan):
        jpegs, source = self.records.read_batch(plan.keys)
        size = self.image_size
        batch = np.empty((len(jpegs), size, size, 3), dtype=np.uint8)
        images = self._decode(jpegs, plan.keys, source)
        for i, (image, key) in enumerate(zip(images, plan.keys)):
            if image.shape != (size, size, 3):
                raise DataError(f"{self.records.describe(int(key))}: image is {image.shape[1]}x{image.shape[0]}, "
                                f"expected {size}x{size}; the training set must hold aligned faces "
                                "(recordio_tools align)")
            batch[i] = apply_numpy(image, plan.params, i, size) if self.strong else image
        mirror = plan.params.mirror.astype(bool)
        batch[mirror] = batch[mirror, :, ::-1]
        images = torch.from_numpy(batch)
        return (normalise(images) if self.normalised else images, torch.from_numpy(source), plan.epoch, plan.step,
                torch.from_numpy(plan.keys))


    def _decode(self, jpegs, keys, source: np.ndarray) -> list[np.ndarray]:
        """Each JPEG decoded; one that does not decode stops, or with data.bad_records=skip is
        replaced like `RecordSet.read_batch` replaces a bad record (label too)."""
        images, bad = [], []
        for i, (jpeg, key) in enumerate(zip(jpegs, keys)):
            try:
                images.append(decode_jpeg(jpeg, self.records, int(key)))
            except DataError as error:
                if self.records.on_bad_record == "stop":
                    raise
                self.records.warn_skipped(int(key), error)
                images.append(None)
                bad.append(i)
        for i, j in zip(bad, self.records.replacement(bad, len(jpegs)) if bad else []):
            images[i], source[i] = images[j], source[j]
        return images


def worker_message(error: DataError) -> str:
    """The error's own message: a DataLoader worker's error comes back with the worker's traceback
    prepended ("Caught DataError in DataLoader worker process 0. Original Traceback ...")."""
    text = str(error)
    if not text.startswith("Caught "):
        return text
    lines = [line for line in text.splitlines() if f"{type(error).__name__}: " in line]
    return lines[-1].split(f"{type(error).__name__}: ", 1)[1] if lines else text


class PlanSampler(Sampler):
    """An endless stream of BatchPlans (one DataLoader item per batch)."""

    def __init__(self, plans):
        self._plans = plans

    def __iter__(self) -> Iterator[BatchPlan]:
        return self._plans()


def build_torch_loader(prep: Prepared, spec: ReadSpec, device: torch.device, *, num_workers: int = 2) -> BatchLoader:
    """A BatchLoader reading with a torch DataLoader (`num_workers` processes, 0 = in process)."""
    if spec.order != "global":
        raise ValueError(f"the torch reader follows the global order only, got order={spec.order!r}")
    on_gpu = device.type == "cuda"
    dataset = PlanDataset(prep.records, spec.image_size, spec.strong_augment, normalised=not on_gpu)

    def stream(first_epoch: int, first_step: int) -> Iterator[RawBatch]:
        def plans():
            return plan_stream(len(prep.records), seed=spec.seed, epoch=first_epoch, start_step=first_step,
                               shard_id=spec.shard_id, num_shards=spec.num_shards, batch_size=spec.batch_size,
                               image_size=spec.image_size, flip=spec.flip, strong=spec.strong_augment,
                               shuffle=spec.shuffle)

        loader = DataLoader(dataset, batch_size=None, sampler=PlanSampler(plans), num_workers=num_workers,
                            pin_memory=on_gpu, prefetch_factor=spec.prefetch if num_workers else None)
        try:
            for images, source, epoch_, step, keys in loader:
                if on_gpu:
                    images = normalise(images.to(device, non_blocking=True))
                yield RawBatch(images, source.numpy(), int(epoch_), int(step), keys.numpy())
        except DataError as error:
            raise type(error)(worker_message(error)) from None

    return BatchLoader(stream, steps=prep.steps, labels=prep.labels, device=device, epoch=spec.epoch,
                       start_step=spec.start_step, channels_last=spec.channels_last, close=prep.records.close)
