"""The unlabeled collection in (a dataset folder or image files), the pseudo-labeled dataset folder out.

Used by `fftrain pseudo-label` (fftrain/commands/pseudo_label.py). `UnlabeledImages` reads either
input; `embed_share` embeds this rank's share; `write_dataset` writes --out as a whole (built under
a temporary name, renamed at the end); `score_against_truth` scores the clusters against planted
identities (synthetic sets).
"""

from __future__ import annotations

import json
import os

import numpy as np

from fftrain.pseudo_label.pipeline import PseudoLabelError

ASSIGNMENTS_FILE = "assignments.npz"
MARKER = "pseudo_label_report.json"
EMBED_CHUNK = 512  # images decoded and embedded at a time


class UnlabeledImages:
    """The JPEG bytes of every input image, in a fixed order, read in slices."""

    def __init__(self, path: str):
        from recordio_tools.manifest import DATASET_FILE

        if not os.path.isdir(path):
            raise PseudoLabelError(f"{path}: not a folder (expected a dataset folder or a folder of images)")
        self.path = path
        self.is_dataset = os.path.exists(os.path.join(path, DATASET_FILE))
        self._items = self._dataset_items() if self.is_dataset else self._image_items()
        if not self._items:
            raise PseudoLabelError(f"{path}: no images to label")

    def _dataset_items(self) -> list:
        from recordio_tools.manifest import read_dataset_info
        from recordio_tools.recordio import read_index

        info = read_dataset_info(self.path)
        return [(os.path.join(self.path, s.rec), offset) for s in info.shards
                for _, offset in read_index(os.path.join(self.path, s.idx))]

    def _image_items(self) -> list:
        from recordio_tools.image_folders import images_below

        return images_below(self.path, self.path)

    def __len__(self) -> int:
        return len(self._items)

    def describe(self, i: int) -> str:
        item = self._items[i]
        return f"{item[0]} byte {item[1]}" if self.is_dataset else os.path.join(self.path, item)

    def jpegs(self, start: int, stop: int) -> list[bytes]:
        from recordio_tools.images import ImageError, prepare_face
        from recordio_tools.recordio import read_record_at, unpack

        out, files = [], {}
        try:
            for i in range(start, stop):
                try:
                    if self.is_dataset:
                        rec, offset = self._items[i]
                        if rec not in files:
                            files[rec] = open(rec, "rb")
                        out.append(unpack(read_record_at(files[rec], offset, rec, f"byte {offset}")[0])[1])
                    else:
                        out.append(prepare_face(os.path.join(self.path, self._items[i])))
                except (ImageError, OSError, ValueError) as e:
                    raise PseudoLabelError(f"{self.describe(i)}: cannot read the image ({e})") from None
        finally:
            for f in files.values():
                f.close()
        return out


def embed_share(images: UnlabeledImages, backbone, ctx, batch_size: int) -> np.ndarray:
    """This rank's contiguous share of the embeddings, [n_r, D] float32."""
    from fftrain.evaluation.verification import decode_face, embed_pairs, rank_range
    from recordio_tools.images import ImageError

    start, stop = rank_range(len(images), ctx.rank, ctx.world_size)
    parts = []
    for lo in range(start, stop, EMBED_CHUNK):
        hi = min(stop, lo + EMBED_CHUNK)
        decoded = []
        for i, jpeg in zip(range(lo, hi), images.jpegs(lo, hi)):
            try:
                decoded.append(decode_face(jpeg))
            except ImageError as e:
                raise PseudoLabelError(f"{images.describe(i)}: cannot decode the image ({e})") from None
        parts.append(embed_pairs(backbone, np.stack(decoded), device=ctx.device, batch_size=batch_size)
                     .astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def load_embeddings_file(path: str, count: int, dim: int, checkpoint: str) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PseudoLabelError(f"{path}: cannot read embeddings ({e})") from None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise PseudoLabelError(f"{path}: expected a float [N, D] array, got {x.dtype} {x.shape}")
    if x.shape[1] != dim:
        raise PseudoLabelError(f"{path}: embeddings are {x.shape[1]}-d but checkpoint {checkpoint} has "
                               f"embedding_size {dim}")
    if x.shape[0] != count:
        raise PseudoLabelError(f"{path}: {x.shape[0]} rows but the unlabeled set has {count} images")
    return x.astype(np.float32)


OUTPUT_COMMAND = "fftrain pseudo-label"  # the output mark of its dataset folders


def check_out(out: str, inputs: list[str]) -> None:
    """The check every dataset-writing command makes (recordio_tools.shards.check_out): --out neither an input
    nor inside or holding one, empty or an earlier pseudo-label output (its mark bound to the folder), and
    no training set referencing its shards."""
    from recordio_tools.errors import UsageError
    from recordio_tools.shards import check_out as check_dataset_out

    try:
        check_dataset_out(out, [path for path in inputs if path], OUTPUT_COMMAND)
    except UsageError as e:
        raise PseudoLabelError(str(e)) from None


def write_dataset(out: str, name: str, images: UnlabeledImages, result, report: dict, shards: int) -> None:
    """Shards with the cluster labels and their loss weights (DatasetWriter), assignments, report; all or
    nothing."""
    from recordio_tools.files import atomic_directory
    from recordio_tools.shards import DatasetWriter

    from fftrain.pseudo_label.report import write_report

    written = np.flatnonzero(result.labels >= 0)
    with atomic_directory(out, OUTPUT_COMMAND) as tmp:
        writer = DatasetWriter(tmp, name, shards)
        try:
            for lo in range(0, len(images), EMBED_CHUNK):
                hi = min(len(images), lo + EMBED_CHUNK)
                if (result.labels[lo:hi] >= 0).any():
                    for i, jpeg in zip(range(lo, hi), images.jpegs(lo, hi)):
                        if result.labels[i] >= 0:
                            writer.add(int(result.labels[i]), jpeg)
            writer.finish(result.num_classes, sample_weights=result.weights[written])
        except BaseException:
            writer.abort()
            raise
        np.savez(os.path.join(tmp, ASSIGNMENTS_FILE), score=result.scores, nearest_class=result.nearest_class,
                 overlap=result.overlap, disjoint=result.disjoint, label=result.labels, weight=result.weights,
                 p_wrong=result.p_wrong)
        write_report(tmp, report, result)


def score_against_truth(path: str, result) -> dict:
    from fftrain.pseudo_label.metrics import clustering_scores, singletons_for_dropped
    from fftrain.pseudo_label.separation import error_rates

    try:
        with open(path, encoding="utf-8") as f:
            truth = json.load(f)
        identity, overlap = np.asarray(truth["identity"]), np.asarray(truth["overlap"], bool)
    except (OSError, ValueError, KeyError) as e:
        raise PseudoLabelError(f"{path}: not a ground-truth file of recordio_tools synth --unlabeled ({e})") from None
    if len(identity) != len(result.scores):
        raise PseudoLabelError(f"{path}: {len(identity)} images in the truth, {len(result.scores)} in the set")
    out = {}
    if result.separation is not None:
        sep = result.separation
        out["otsu"] = error_rates(sep.otsu_overlap, overlap)
        out["weibull"] = error_rates(sep.weibull_overlap, overlap, sep.weibull_rejected)
    d = result.disjoint & ~overlap  # truly disjoint among those clustered
    if d.any():
        out["clustering"] = clustering_scores(singletons_for_dropped(result.clusters[d]), identity[d])
    return out
