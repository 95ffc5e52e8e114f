"""The one embedding pass: every training image and every verification image, once.

Under torchrun each rank embeds a contiguous share of the combined-index keys (and of each
verification file's images), in chunks of `chunk` images, so memory holds one chunk of pixels
at a time. Embeddings are flip-summed as in `fftrain eval` (unless `flip=False`), L2-normalised
and written as float16 rows of a memory-mapped `embeddings.npy` (row = combined-index key) in
the work folder; the per-class sums of the normalised embeddings and the class sizes are summed
over the ranks, so the centres cost nothing beyond the pass.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from fftrain.distributed import DistContext, all_gather_object, all_reduce_, barrier
from fftrain.search import unit_rows

EMBEDDINGS_FILE = "embeddings.npy"
LABELS_FILE = "labels.npy"


@dataclass
class TrainEmbeddings:
    embeddings: np.ndarray
    """[N, D] float16 (memory-mapped), L2-normalised; row k is combined-index key k."""
    labels: np.ndarray
    """[N] int64 source class of each record."""
    class_sums: np.ndarray
    """[C_src, D] float64 sum of the normalised embeddings of each class (of the float16 values)."""
    class_counts: np.ndarray
    """[C_src] int64 images per class."""
    seconds: float


def _decode_chunk(records, keys: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    from fftrain.data.torch_reader import decode_jpeg

    jpegs, labels = records.read_batch(keys)
    pixels = np.stack([decode_jpeg(j, records, int(k)) for j, k in zip(jpegs, keys)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2), labels


def _open_rows(path: str, shape: tuple, dtype, ctx: DistContext) -> np.ndarray:
    """A .npy memmap every rank writes its rows into: created by rank 0, opened by the others after."""
    if ctx.is_main:
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
    barrier(ctx.group)
    return np.lib.format.open_memmap(path, mode="r+")


def embed_training_set(backbone, records, num_classes: int, dim: int, *, ctx: DistContext, work_dir: str,
                       batch_size: int = 64, chunk: int = 1024, flip: bool = True,
                       progress: bool = True) -> TrainEmbeddings:
    """Embed every record of `records` (a `fftrain.data.records.RecordSet`) with a `dim`-d backbone;
    collective over ctx.group."""
    from tqdm import tqdm

    from fftrain.evaluation.verification import embed_pairs, rank_range

    start_time = time.perf_counter()
    n = len(records)
    lo, hi = rank_range(n, ctx.rank, ctx.world_size)
    emb = _open_rows(os.path.join(work_dir, EMBEDDINGS_FILE), (n, dim), np.float16, ctx)
    labels_out = _open_rows(os.path.join(work_dir, LABELS_FILE), (n,), np.int64, ctx)
    sums = torch.zeros(num_classes, dim, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    bar = tqdm(total=n, unit="img", desc="embed", disable=not (progress and ctx.is_main), leave=False,
               file=sys.stderr)
    for start in range(lo, hi, chunk):
        keys = np.arange(start, min(hi, start + chunk))
        pixels, labels = _decode_chunk(records, keys)
        vectors = unit_rows(embed_pairs(backbone, pixels, device=ctx.device, batch_size=batch_size, flip=flip),
                            torch.float64).numpy()
        stored = vectors.astype(np.float16)
        emb[keys[0]:keys[-1] + 1] = stored
        labels_out[keys[0]:keys[-1] + 1] = labels
        index = torch.from_numpy(labels)
        sums.index_add_(0, index, torch.from_numpy(stored.astype(np.float64)))
        counts.index_add_(0, index, torch.ones(len(keys), dtype=torch.float64))
        bar.update(len(keys) * ctx.world_size)
    bar.close()
    emb.flush()
    labels_out.flush()
    if ctx.group is not None:  # on the rank's device: NCCL reduces CUDA tensors only
        sums, counts = (all_reduce_(t.to(ctx.device), ctx.group).cpu() for t in (sums, counts))
    barrier(ctx.group)
    embeddings = np.lib.format.open_memmap(os.path.join(work_dir, EMBEDDINGS_FILE), mode="r")
    labels_all = np.asarray(np.lib.format.open_memmap(os.path.join(work_dir, LABELS_FILE), mode="r"))
    return TrainEmbeddings(embeddings, labels_all, sums.numpy(), counts.numpy().astype(np.int64),
                           time.perf_counter() - start_time)


def embed_verification_bin(backbone, path: str, *, ctx: DistContext, batch_size: int = 64,
                           flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised float32 embeddings [2N, D] of a .bin's images, issame [N] bool), on every rank."""
    from fftrain.evaluation.verification import embed_pairs, load_bin

    images, issame = load_bin(path, part=(ctx.rank, ctx.world_size), cache=False)
    local = embed_pairs(backbone, images, device=ctx.device, batch_size=batch_size, flip=flip)
    parts = [p for p in all_gather_object(local, ctx.group) if p.size]
    embeddings = np.concatenate(parts)
    if embeddings.shape[0] != 2 * len(issame):
        raise RuntimeError(f"{path}: gathered {embeddings.shape[0]} embeddings for {2 * len(issame)} images")
    return unit_rows(embeddings, torch.float64).numpy().astype(np.float32), issame
