"""Verification on insightface pair files (lfw.bin, cfp_fp.bin, cfp_ff.bin, agedb_30.bin,
calfw.bin, cplfw.bin), on one process or spread over the ranks of a training run.

    result = evaluate_bin(backbone, "val/lfw.bin", device=torch.device("cpu"))
    result = evaluate_bin(backbone, path, device=ctx.device, group=ctx.group)   # on every rank
    print(format_table([result]))

Per image: decoded to RGB 112x112 (once per process: a small decoded-image cache, since
training evaluates every N steps), scaled to [-1, 1] as in training (x / 127.5 - 1), embedded
as is and mirrored (left-right), and the two embeddings summed; the metrics are insightface's on
those sums (see `fftrain.evaluation.metrics`). The .bin is read with a restricted unpickler
(`recordio_tools.verification_bin`): a file asking for anything but lists, bytes and bools is
refused with `VerificationBinError`, and no code from it runs.

With a process group of W ranks every rank embeds a contiguous 1/W of the images, the
embeddings are all-gathered, and every rank computes the same metrics (cheap next to the
forward passes). All ranks must call it together with the same file.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fftrain.distributed import all_gather_object, rank_of, world_size_of
from fftrain.evaluation.metrics import DEFAULT_FARS, N_FOLDS, far_key, split_pairs, verification_metrics

IMAGE_SIZE = 112
"""Side of the face crops the backbones take (insightface's bins hold 112x112 JPEGs)."""

VERIFICATION_TARGETS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw")
"""insightface's file stems of the usual pair sets."""

_CACHE_ENTRIES = 8
_cache: collections.OrderedDict = collections.OrderedDict()


def clear_cache() -> None:
    """Forget every decoded image set held by this process."""
    _cache.clear()


def decode_face(data: bytes, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """[3, S, S] uint8 RGB of one encoded face; other sizes are resized on the short side to S
    (bilinear) and centre-cropped, as insightface's `resize_short` does for square crops."""
    from PIL import Image

    from recordio_tools.images import decode

    image = decode(data).convert("RGB")
    if image.size != (image_size, image_size):
        w, h = image.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        image = image.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def _decode_all(encoded: list[bytes], source: str, image_size: int, first_index: int) -> np.ndarray:
    from recordio_tools.images import ImageError
    from recordio_tools.verification_bin import VerificationBinError

    out = np.empty((len(encoded), 3, image_size, image_size), dtype=np.uint8)

    def one(i: int) -> None:
        try:
            out[i] = decode_face(encoded[i], image_size)
        except ImageError as e:
            raise VerificationBinError(f"{source}: image {first_index + i}: {e}") from None

    workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(encoded) > 64:
        with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
            list(pool.map(one, range(len(encoded))))
    else:
        for i in range(len(encoded)):
            one(i)
    return out


def load_bin(path: str | os.PathLike, *, part: tuple[int, int] = (0, 1), image_size: int = IMAGE_SIZE,
             cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images (uint8 RGB [n, 3, S, S]) of a .bin, and all its labels ([N] bool).

    Images 2i and 2i+1 are pair i. `part=(r, W)` keeps only the r-th of W contiguous shares of
    the 2N images (`rank_range`), and only those are decoded. Results are cached per process,
    keyed by the file's path, size and mtime and the share.
    """
    from recordio_tools.verification_bin import VerificationBinError, read_verification_bin

    path = os.fspath(path)
    rank, world = part
    if not 0 <= rank < world:
        raise ValueError(f"part={part}: expected (rank, world_size) with 0 <= rank < world_size")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VerificationBinError(f"{path}: verification file not found") from None
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size, rank, world, image_size)
    if cache and key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    encoded, issame = read_verification_bin(path)
    start, stop = rank_range(len(encoded), rank, world)
    images = _decode_all(encoded[start:stop], path, image_size, start)
    labels = np.asarray(issame, dtype=bool)
    if cache:
        _cache[key] = (images, labels)
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return images, labels


def rank_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous [start, stop) of n items that rank `rank` of `world_size` handles."""
    return n * rank // world_size, n * (rank + 1) // world_size


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (whose forward may broadcast buffers: a collective that ranks
    with different batch counts would deadlock on) and torch.compile (no recompiles per size)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def embed_pairs(model: nn.Module, images, *, device: torch.device | str, batch_size: int = 64,
                dtype: torch.dtype = torch.float32, flip: bool = True) -> np.ndarray:
    """Embeddings [n, D] float64 of uint8 RGB images [n, 3, H, W]: model(x) + model(mirror(x)).

    `x = image / 127.5 - 1`; `dtype` other than float32 runs the forward under autocast. The
    model is put in eval mode for the call and its mode restored after. With `flip=False` only
    model(x) is returned. Sums are taken in float64 of the model's outputs, as insightface does.
    An empty `images` gives an array of shape [0, 0].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [n, 3, H, W], got {images.dtype} {list(images.shape)}")
    if images.shape[0] == 0:
        return np.zeros((0, 0))
    device = torch.device(device)
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    autocast = dtype != torch.float32
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device, non_blocking=True).float() / 127.5 - 1.0
            b = x.shape[0]
            if flip:
                x = torch.cat([x, x.flip(3)])
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                y = net(x)
            y = y.float().cpu().double()
            out.append(y[:b] + y[b:] if flip else y)
    finally:
        net.train(was_training)
    return torch.cat(out).numpy()


def evaluate_embeddings(embeddings: np.ndarray, issame, *, name: str = "", proxies=None,
                        dao_k: int = 10, dao_tau: float = 1.0, n_folds: int = N_FOLDS,
                        fars=DEFAULT_FARS, group=None) -> dict:
    """The result dict of `evaluate_bin` from flip-summed embeddings [2N, D] (pair i = rows 2i,
    2i+1). With `proxies` (this rank's rows of the class proxies when `group` is given) the DAO
    accuracy and the cosine accuracy under the same protocol are added; `group` is the group the
    proxies are sharded over (None: `proxies` is the whole anchor set)."""
    metrics = verification_metrics(embeddings, issame, n_folds=n_folds, fars=fars)
    result = {"name": name, **metrics.as_dict()}
    if proxies is not None:
        from fftrain.evaluation.dao import evaluate_dao

        e1, e2 = split_pairs(np.asarray(embeddings))
        result.update(evaluate_dao(e1, e2, issame, proxies, k=dao_k, tau=dao_tau, n_folds=n_folds, group=group))
    return result


def check_pair_count(bin_path, num_pairs: int) -> None:
    """The 10-fold protocol needs at least `N_FOLDS` pairs (the check `fftrain train` makes at start)."""
    from recordio_tools.verification_bin import VerificationBinError

    if num_pairs < N_FOLDS:
        raise VerificationBinError(f"{bin_path}: {num_pairs} pairs; the {N_FOLDS}-fold protocol needs at least "
                                   f"{N_FOLDS}")


def evaluate_bin(model: nn.Module, bin_path: str | os.PathLike, *, device: torch.device | str,
                 batch_size: int = 64, group=None, dtype: torch.dtype = torch.float32,
                 name: str | None = None, proxies=None, proxy_group=None, dao_k: int = 10,
                 dao_tau: float = 1.0, image_size: int = IMAGE_SIZE, cache: bool = True) -> dict:
    """Verification numbers of `model` on one .bin, the same dict on every rank of `group`.

    Keys: name (the file stem unless given), num_pairs, accuracy, std (over the 10 folds),
    best_threshold (mean squared-L2 threshold), tar_far_1e-3, tar_far_1e-4 (None when the file
    has too few negative pairs, explained in notes), fold_accuracies, notes; with `proxies` also
    dao_accuracy, dao_std, dao_cosine_accuracy, dao_cosine_std, dao_k, dao_tau.

    `proxies`: the DAO anchor set, [C, D] class proxies (numpy, or a torch tensor; a CUDA one is
    searched on its device). `proxy_group`: None when every rank passes the whole set; the group
    over which they are sharded when each rank passes its own rows (training's Partial-FC shard).
    """
    rank, world = rank_of(group), world_size_of(group)
    images, issame = load_bin(bin_path, part=(rank, world), image_size=image_size, cache=cache)
    check_pair_count(bin_path, len(issame))
    local = embed_pairs(model, images, device=device, batch_size=batch_size, dtype=dtype)
    parts = [p for p in all_gather_object(local, group) if p.size]
    embeddings = np.concatenate(parts) if parts else np.zeros((0, 0))
    if embeddings.shape[0] != 2 * len(issame):
        raise RuntimeError(f"{bin_path}: gathered {embeddings.shape[0]} embeddings for {2 * len(issame)} images")
    return evaluate_embeddings(embeddings, issame, name=name or Path(bin_path).stem, proxies=proxies,
                               dao_k=dao_k, dao_tau=dao_tau, group=proxy_group)


def evaluate_bins(model: nn.Module, paths, **kw) -> list[dict]:
    """`evaluate_bin` on each path in turn (same keyword arguments)."""
    return [evaluate_bin(model, p, **kw) for p in paths]


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def format_table(results: list[dict]) -> str:
    """name | pairs | acc ± std | TAR@1e-3 | TAR@1e-4 [| DAO acc (cos)], percentages, n/a for
    a TAR that the file cannot measure; notes listed under the table."""
    dao = any("dao_accuracy" in r for r in results)
    header = ["name", "pairs", "acc ± std (%)", "TAR@FAR1e-3", "TAR@FAR1e-4"]
    if dao:
        header.append("DAO acc (cos, same protocol)")
    rows = []
    notes = []
    for r in results:
        row = [r["name"], str(r["num_pairs"]), f"{_pct(r['accuracy'])} ± {_pct(r['std'])}",
               _pct(r.get(far_key(1e-3))), _pct(r.get(far_key(1e-4)))]
        if dao:
            row.append(f"{_pct(r['dao_accuracy'])} ({_pct(r['dao_cosine_accuracy'])})"
                       if "dao_accuracy" in r else "-")
        rows.append(row)
        notes.extend(f"{r['name']}: {n}" for n in r.get("notes", []))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
