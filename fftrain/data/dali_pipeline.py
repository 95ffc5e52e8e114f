"""DALI pipeline over the RecordIO shards of a training set: decode, augment, flip, normalise.

    loader = build_dali_loader(prepared, ReadSpec(shard_id=rank, num_shards=world, batch_size=128, seed=0),
                               device)         # the CPU: DALI's CPU-only mode

One pipeline per rank over every shard of every dataset. Images are decoded on the GPU
("mixed", nvJPEG) when `device` is CUDA, on the CPU (libjpeg-turbo, DALI's CPU-only mode)
when it is the CPU; then optional strong augmentation, random flip, and `(x - 127.5) / 127.5` into
NCHW float32. Labels are the exact source class ids (two-float flag-2 labels or flag-0 floats).

Two orders (`order=`):

- "global" (default). Rank r reads `sharding.rank_batches` of a permutation of all records of
  all datasets that depends only on (seed, epoch); a background thread reads the records by key a
  few batches ahead (one pread each, `records.RecordSet`), and `fn.external_source` takes the
  JPEG bytes from it. Every
  batch mixes the datasets in proportion to their size; the order is deterministic for
  (seed, epoch) whatever the number of DALI threads; resume at (epoch, step) costs nothing (no
  batch is decoded to skip); the DataLoader fallback reproduces it exactly. One pipeline serves
  every epoch (prefetch runs across the epoch boundary).
- "reader". `fn.readers.mxnet(path=all shards, index_path=[combined index])`, DALI's own
  `shard_id`/`num_shards` split (`stick_to_shard=True`, the shard rotated by one each epoch as
  `stick_to_shard=False` would), shuffled by DALI's buffer (`initial_fill` records) with a seed
  derived from (seed, epoch, rank). The pipeline is rebuilt every epoch and stops after
  `steps_per_epoch` batches, so each rank reads the same number of steps and the records left
  in its shard are the dropped tail; a resume at (epoch, step) decodes and drops `step`
  batches. A buffer shuffle keeps neighbouring records together, so a batch holds one or two
  datasets at a time: this is the insightface-style order, kept for comparison and throughput.

Augmentation parameters (flip, strong) come from `augment.step_params` in both orders.
A JPEG that fails to decode raises `DataError` naming the shard and key (DALI's own message does
not say which record): the records in flight are re-decoded with PIL to find it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


from fftrain.data.augment import step_params
from fftrain.data.batches import BatchLoader, RawBatch
from fftrain.data.plan import plan_stream
from fftrain.data.read_spec import Prepared, ReadSpec
from fftrain.data.records import DataError, RecordSet, decode_error_key
from fftrain.data.sharding import derive_seed, reader_shard_for_epoch, reader_shard_range

ORDERS = ("global", "reader")


def build_dali_loader(prep: Prepared, spec: ReadSpec, device: torch.device, *, num_threads: int = 2,
                      initial_fill: int = 4096) -> BatchLoader:
    """A BatchLoader whose batches come from a DALI pipeline (see the module doc for `spec.order`)."""
    if spec.order not in ORDERS:
        raise ValueError(f"unknown DALI order {spec.order!r}; available: {list(ORDERS)}")
    pipes = _Spec(prep.records, shard_id=spec.shard_id, num_shards=spec.num_shards, device_id=_dali_device_id(device),
                  batch_size=spec.batch_size, seed=spec.seed, steps=prep.steps, flip=spec.flip,
                  strong=spec.strong_augment, shuffle=spec.shuffle, num_threads=num_threads, prefetch=spec.prefetch,
                  initial_fill=initial_fill, image_size=spec.image_size)
    stream = pipes.global_stream if spec.order == "global" else pipes.reader_stream
    return BatchLoader(stream, steps=prep.steps, labels=prep.labels, device=device, epoch=spec.epoch,
                       start_step=spec.start_step, channels_last=spec.channels_last, close=prep.records.close)


def _dali_device_id(device: torch.device) -> int | None:
    """DALI's device_id: the CUDA device's index; None (CPU-only mode) for the CPU."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


@dataclass
class _Spec:
    """Everything a pipeline of this rank is built from; `*_stream(epoch, step)` are the readers."""

    records: RecordSet
    shard_id: int
    num_shards: int
    device_id: int | None
    batch_size: int
    seed: int
    steps: int
    flip: bool
    strong: bool
    shuffle: bool
    num_threads: int
    prefetch: int
    initial_fill: int
    image_size: int

    def params(self, epoch: int, step: int):
        return step_params(self.seed, epoch, step, shard_id=self.shard_id, num_shards=self.num_shards,
                           batch_size=self.batch_size, image_size=self.image_size, flip=self.flip,
                           strong=self.strong)

    def pipeline(self, seed: int, graph):
        """A built pipeline whose outputs are `graph()`. With strong augmentation DALI's conditionals
        are on, so only the samples drawn for an effect pay for it (`_strong_augment`)."""
        from nvidia.dali import pipeline_def

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=self.prefetch, seed=seed, enable_conditionals=self.strong)
        def definition():
            return graph()

        pipe = definition()
        pipe.build()
        return pipe

    def param_arrays(self, params) -> list:
        """A step's parameters as external_source outputs, matching `param_kinds`."""
        if not self.strong:
            return [params.mirror]
        return [params.mirror, params.blurred(self.image_size), params.blur_size, params.recoloured(), params.color]

    def param_kinds(self) -> list:
        from nvidia.dali import types

        return [types.INT32] + ([types.BOOL, types.FLOAT, types.BOOL, types.FLOAT] if self.strong else [])

    # -- global order ---------------------------------------------------------------------------

    def global_stream(self, epoch: int, step: int) -> Iterator[RawBatch]:
        plans = plan_stream(len(self.records), seed=self.seed, epoch=epoch, start_step=step, shard_id=self.shard_id,
                            num_shards=self.num_shards, batch_size=self.batch_size, image_size=self.image_size,
                            flip=self.flip, strong=self.strong, shuffle=self.shuffle)
        feed = _GlobalFeed(self, plans)
        pipe = self.pipeline(derive_seed(self.seed, self.shard_id), lambda: _images(feed.outputs(), self))
        try:
            while True:
                (images,) = _run(pipe, self.records, lambda: [k for plan, _ in feed.in_flight for k in plan.keys])
                plan, source = feed.in_flight.popleft()
                images = _to_torch(images, self.device_id, self.records, plan.keys)
                yield RawBatch(images, source, plan.epoch, plan.step, plan.keys)
        finally:
            del pipe
            feed.close()

    # -- fn.readers.mxnet order -----------------------------------------------------------------

    def reader_stream(self, epoch: int, step: int) -> Iterator[RawBatch]:
        while True:
            yield from self._reader_epoch(epoch, step)
            epoch, step = epoch + 1, 0

    def _reader_epoch(self, epoch: int, first_step: int) -> Iterator[RawBatch]:
        from nvidia.dali import fn

        shard = reader_shard_for_epoch(self.shard_id, self.num_shards, epoch)
        feed = _ParamsFeed(self, epoch)

        def graph():
            jpegs, labels = fn.readers.mxnet(
                path=self.records.rec_paths, index_path=[self.records.index_path], random_shuffle=self.shuffle,
                initial_fill=self.initial_fill, shard_id=shard, num_shards=self.num_shards, stick_to_shard=True,
                pad_last_batch=False, seed=derive_seed(self.seed, epoch, shard, 2), name="reader")
            return _images([jpegs, *feed.outputs()], self), labels, jpegs  # jpegs: for their source_info

        pipe = self.pipeline(derive_seed(self.seed, epoch, self.shard_id, 1), graph)
        lo, hi = reader_shard_range(shard, self.num_shards, len(self.records))
        try:
            for step in range(self.steps):
                images, labels_out, jpegs_out = _run(pipe, self.records, lambda s=step: _reader_window(lo, hi, s, self))
                if step < first_step:
                    continue  # resume: this batch was read before the interruption
                source = _source_ids(labels_out, jpegs_out, self.records)
                yield RawBatch(_to_torch(images, self.device_id, self.records, None), source, epoch, step)
        finally:
            del pipe


class _GlobalFeed:
    """external_source callback for the global order: the next plan's JPEG bytes and parameters;
    remembers the plans in flight (DALI returns batches in the order they were fed).

    The records are read `read_ahead` batches ahead on one background thread (pread releases the
    GIL), so the training thread, which runs this callback inside pipe.run(), only takes a batch
    that is already in memory. One thread keeps the order and the file handles simple."""

    def __init__(self, spec: _Spec, plans, read_ahead: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.spec, self.plans = spec, plans
        self.in_flight: deque = deque()
        self._ahead: deque = deque()
        self._read_ahead = read_ahead
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fftrain-records")

    def _submit(self) -> bool:
        plan = next(self.plans, None)
        if plan is None:
            return False
        self._ahead.append((plan, self._pool.submit(self.spec.records.read_batch, plan.keys)))
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def outputs(self) -> list:
        from nvidia.dali import fn, types

        kinds = [types.UINT8] + self.spec.param_kinds()
        return list(fn.external_source(source=self, num_outputs=len(kinds), batch=True, dtype=kinds))

    def __call__(self) -> list:
        while len(self._ahead) <= self._read_ahead and self._submit():
            pass
        if not self._ahead:
            raise StopIteration
        plan, reading = self._ahead.popleft()
        jpegs, source = reading.result()
        self.in_flight.append((plan, source))
        return [jpegs] + self.spec.param_arrays(plan.params)


class _ParamsFeed:
    """external_source callback for the reader order: the augmentation parameters of step 0, 1, ..."""

    def __init__(self, spec: _Spec, epoch: int):
        self.spec, self.epoch, self.step = spec, epoch, 0

    def outputs(self) -> list:
        from nvidia.dali import fn

        kinds = self.spec.param_kinds()
        return list(fn.external_source(source=self, num_outputs=len(kinds), batch=True, dtype=kinds))

    def __call__(self) -> list:
        params = self.spec.params(self.epoch, self.step)
        self.step += 1
        return self.spec.param_arrays(params)


def _images(inputs: list, spec: _Spec):
    """Decode, (strong augmentation), flip and normalise: the graph shared by both orders.
    `inputs` = [jpegs] + the step parameters (`_Spec.param_kinds`)."""
    from nvidia.dali import fn, types

    jpegs, mirror = inputs[0], inputs[1]
    images = fn.decoders.image(jpegs, device="cpu" if spec.device_id is None else "mixed", output_type=types.RGB)
    if spec.strong:
        images = _strong_augment(images, *inputs[2:], image_size=spec.image_size)
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=[127.5] * 3,
                                    std=[127.5] * 3, mirror=mirror)


def _strong_augment(images, blur, blur_size, recolor, color, *, image_size: int):
    """Resize-blur and colour, each only on the samples drawn for it. `blur` and `recolor` are
    per-sample DataNodes: DALI's conditionals (`enable_conditionals=True`) split the batch."""
    from nvidia.dali import fn, types

    if blur:
        images = fn.resize(images, size=blur_size, interp_type=types.INTERP_LINEAR, antialias=True)
        images = fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_LINEAR)
    if recolor:
        images = fn.coord_transform(images, M=color, dtype=types.UINT8)
    return images


def _run(pipe, records: RecordSet, candidates):
    """pipe.run(), with a DALI failure turned into a DataError naming the bad record when found."""
    try:
        return pipe.run()
    except RuntimeError as error:
        keys = candidates()
        bad = decode_error_key(records, keys)
        if bad is not None:
            raise DataError(f"{records.describe(bad)}: the JPEG does not decode (DALI: {_dali_reason(error)}); "
                            f"{records.verify_hint()}") from error
        raise DataError(f"DALI pipeline failed while reading {len(keys)} records around "
                        f"{records.describe(int(keys[0])) if len(keys) else records.index_path}: "
                        f"{_dali_reason(error)}; {records.verify_hint()}") from error


def _dali_reason(error: Exception) -> str:
    """The operator's own words from a DALI error (the text after 'encountered:')."""
    text = str(error)
    reason = text.split("encountered:", 1)[-1]
    lines = [line.strip() for line in reason.splitlines()
             if line.strip() and "pipeline object is no longer valid" not in line and "C++ context" not in line]
    return " ".join(lines) if lines else text.strip()


def _reader_window(lo: int, hi: int, step: int, spec: _Spec) -> list[int]:
    """Keys fn.readers.mxnet most likely read last before batch `step` failed: its shuffle buffer
    holds the last `initial_fill` records read, newest first (DALI does not name the record)."""
    newest = min(hi, lo + spec.initial_fill + (step + spec.prefetch + 1) * spec.batch_size)
    oldest = max(lo, newest - 4 * spec.initial_fill - (spec.prefetch + 2) * spec.batch_size)
    return list(range(newest - 1, oldest - 1, -1))


def _source_ids(labels, jpegs, records: RecordSet) -> np.ndarray:
    """Exact int64 source ids from fn.readers.mxnet's float labels, checked against the manifest."""
    from recordio_tools.recordio import class_ids_from_labels

    try:
        source = class_ids_from_labels(np.asarray(labels.as_tensor()))
    except (RuntimeError, ValueError):  # flag-0 and flag-2 shards mixed: labels of different lengths
        source = np.array([int(class_ids_from_labels(np.asarray(labels[i])[None])[0]) for i in range(len(labels))])

    def name(i: int) -> str:
        info = jpegs[i].source_info()  # "<path> at index <byte offset>"
        path, _, offset = info.rpartition(" at index ")
        key = records.key_at(path, int(offset)) if offset.isdigit() else None
        return records.describe(key) if key is not None else info

    records.check_labels(source, name)
    return source


def _to_torch(images, device_id: int | None, records: RecordSet, keys) -> torch.Tensor:
    """Copy a DALI batch into a new torch tensor (DALI reuses its buffers on the next run)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    try:
        dense = images.as_tensor()
    except RuntimeError:
        shapes = [tuple(images[i].shape()) for i in range(len(images))]
        odd = next(i for i, s in enumerate(shapes) if s != shapes[0])
        where = records.describe(int(keys[odd])) if keys is not None else f"sample {odd} of the batch"
        raise DataError(f"{where}: image shape {shapes[odd]} differs from {shapes[0]}; the training set must hold "
                        "aligned faces of one size (recordio_tools align)") from None
    if device_id is None:
        out = torch.empty(dense.shape(), dtype=torch.float32)
        return feed_ndarray(dense, out)
    device = torch.device("cuda", device_id)
    out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
    return feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
