"""IJB-B / IJB-C 1:1 template verification, on insightface's layout and with its protocol.

    meta = read_ijb_meta("/data/IJBC", "IJBC")
    result = evaluate_ijb(backbone, meta, device=ctx.device, group=ctx.group)   # on every rank
    result["tar_at_far"]["0.0001"]                                              # TAR at FAR 1e-4

Layout (insightface's `IJB_release`): `DIR/loose_crop/<image>` and, in `DIR/meta/`, for target
`IJBC` (file names in lower case, as insightface's `eval_ijbc.py` opens them):
- `ijbc_name_5pts_score.txt`: `image x1 y1 ... x5 y5 score`, one image per line (the landmarks of
  the face in the loose crop, and the detector's score for it);
- `ijbc_face_tid_mid.txt`: `image template_id media_id`, the same images in the same order;
- `ijbc_template_pair_label.txt`: `template_1 template_2 label` (1: same person).

Protocol, as insightface's `eval_ijbc.py` computes it:
1. each image is aligned with its 5 landmarks onto the 112x112 ArcFace template (the similarity
   transform `recordio_tools convert --landmarks` uses) and embedded as it is and mirrored; the
   image feature is the sum of the two (`flip=False`: the first only);
2. the feature keeps its norm (`norm_score=False`: it is L2-normalised), and is multiplied by the
   detector score (`detector_score=False`: not);
3. a media's feature is the mean of its images' features in the template (a media's images are
   frames of one video), a template's feature is the sum of its medias' features, L2-normalised;
4. a pair's score is the cosine of its two templates' features, computed in blocks of pairs;
5. TAR at each FAR is read off the ROC over all pairs as insightface reads it: the ROC point whose
   false positive rate is the closest to the FAR (`sklearn.metrics.roc_curve`; among equally close
   points, the highest TPR). A FAR below one
   negative pair (fewer than 1/FAR negatives) is not measurable: None, with a note.

With a process group of W ranks every rank aligns and embeds a contiguous 1/W of the images; the
features are gathered, and every rank pools and scores (cheap next to the forward passes).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fftrain.errors import UserError

IJB_TARGETS = ("IJBC", "IJBB")
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""The FARs reported; JSON keys are `str(far)` ('1e-06', ..., '0.1')."""
PAIR_BLOCK = 100_000
"""Pairs scored at once: a [block, D] temporary per side, never [pairs, D]."""


class IjbError(UserError, ValueError):
    """A missing or malformed IJB file; the message names it."""


@dataclass
class IjbMeta:
    """The three meta files of one target, parsed."""

    root: str
    target: str
    images: list[str]
    """Image paths relative to `loose_crop/`, in the order of the 5-point file."""
    landmarks: np.ndarray
    """[n, 5, 2] float64 pixels."""
    faceness: np.ndarray
    """[n] float32 detector scores."""
    templates: np.ndarray
    """[n] int64 template id of each image."""
    medias: np.ndarray
    """[n] int64 media id of each image."""
    pair_templates: np.ndarray
    """[p, 2] int64 template ids."""
    pair_labels: np.ndarray
    """[p] int8, 1 for the same person."""


def meta_path(root: str, target: str, what: str) -> str:
    return os.path.join(root, "meta", f"{target.lower()}_{what}.txt")


def _rows(path: str, width: int):
    """(line number, fields) of every non-empty line, each with exactly `width` fields."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise IjbError(f"{path}: IJB meta file not found") from None
    except OSError as e:
        raise IjbError(f"{path}: cannot read ({e.strerror})") from None
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != width:
                    raise IjbError(f"{path}: line {number}: expected {width} fields, got {len(fields)}")
                yield number, fields
        except UnicodeDecodeError:
            raise IjbError(f"{path}: not UTF-8 text") from None


def _numbers(path: str, number: int, fields, kind):
    try:
        values = [kind(f) for f in fields]
    except ValueError:
        raise IjbError(f"{path}: line {number}: expected {kind.__name__} numbers, got {' '.join(fields)}") from None
    if kind is float and not np.isfinite(values).all():
        raise IjbError(f"{path}: line {number}: numbers must be finite, got {' '.join(fields)}")
    return values


def _read_points(root: str, target: str):
    path = meta_path(root, target, "name_5pts_score")
    names, points, scores = [], [], []
    for number, fields in _rows(path, 12):
        values = _numbers(path, number, fields[1:], float)
        names.append(fields[0])
        points.append(values[:10])
        scores.append(values[10])
    if not names:
        raise IjbError(f"{path}: no images listed")
    return path, names, np.asarray(points, dtype=np.float64).reshape(-1, 5, 2), np.asarray(scores, dtype=np.float32)


def _read_templates(root: str, target: str, names: list[str], points_path: str):
    path = meta_path(root, target, "face_tid_mid")
    ids = []
    for number, fields in _rows(path, 3):
        if len(ids) < len(names) and fields[0] != names[len(ids)]:
            raise IjbError(f"{path}: line {number}: image {fields[0]} where {points_path} has {names[len(ids)]} "
                           "(the two files list the same images in the same order)")
        ids.append(_numbers(path, number, fields[1:], int))
    if len(ids) != len(names):
        raise IjbError(f"{path}: {len(ids)} images, {points_path} has {len(names)}")
    ids = np.asarray(ids, dtype=np.int64)
    return ids[:, 0], ids[:, 1]


def _read_pairs(root: str, target: str, templates: np.ndarray):
    path = meta_path(root, target, "template_pair_label")
    rows = [_numbers(path, number, fields, int) for number, fields in _rows(path, 3)]
    if not rows:
        raise IjbError(f"{path}: no template pairs listed")
    rows = np.asarray(rows, dtype=np.int64)
    labels = rows[:, 2]
    if not np.isin(labels, (0, 1)).all():
        raise IjbError(f"{path}: labels must be 0 or 1, found {labels[~np.isin(labels, (0, 1))][0]}")
    unknown = ~np.isin(rows[:, :2], np.unique(templates))
    if unknown.any():
        raise IjbError(f"{path}: template {rows[:, :2][unknown][0]} has no image in "
                       f"{meta_path(root, target, 'face_tid_mid')}")
    return rows[:, :2], labels.astype(np.int8)


def read_ijb_meta(root: str, target: str) -> IjbMeta:
    """The target's meta files under `root`, checked; an IjbError names the first bad file."""
    if target not in IJB_TARGETS:
        raise IjbError(f"--ijb-target {target}: expected one of {', '.join(IJB_TARGETS)}")
    if not os.path.isdir(root):
        raise IjbError(f"{root}: IJB folder not found")
    crops = os.path.join(root, "loose_crop")
    if not os.path.isdir(crops):
        raise IjbError(f"{crops}: folder of IJB images not found (insightface's layout: DIR/loose_crop, DIR/meta)")
    points_path, names, points, scores = _read_points(root, target)
    templates, medias = _read_templates(root, target, names, points_path)
    pairs, labels = _read_pairs(root, target, templates)
    return IjbMeta(root, target, names, points, scores, templates, medias, pairs, labels)


def load_aligned(meta: IjbMeta, index: int, size: int = 112) -> np.ndarray:
    """[3, size, size] uint8 RGB of image `index`, aligned with its landmarks."""
    from recordio_tools.align import align_face
    from recordio_tools.images import ImageError, decode

    path = os.path.join(meta.root, "loose_crop", meta.images[index])
    try:
        with open(path, "rb") as f:
            image = decode(f.read()).convert("RGB")
        face = align_face(image, meta.landmarks[index], size)
    except FileNotFoundError:
        raise IjbError(f"{path}: image listed in {meta_path(meta.root, meta.target, 'name_5pts_score')} "
                       "not found") from None
    except (ImageError, OSError) as e:
        raise IjbError(f"{path}: {e}") from None
    except ValueError as e:  # degenerate landmarks
        raise IjbError(f"{meta_path(meta.root, meta.target, 'name_5pts_score')}: {meta.images[index]}: {e}") from None
    return np.asarray(face, dtype=np.uint8).transpose(2, 0, 1)


def embed_images(model: nn.Module, meta: IjbMeta, indices: range, *, device, batch_size: int = 64,
                 flip: bool = True, progress: bool = False) -> np.ndarray:
    """float32 [len(indices), D] image features (flip-summed unless `flip=False`)."""
    from tqdm import tqdm

    from fftrain.evaluation.verification import embed_pairs

    out = []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(indices), desc=f"{meta.target} images",
                                                   unit="img", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            images = np.stack(list(pool.map(lambda i: load_aligned(meta, i), batch)))
            out.append(embed_pairs(model, images, device=device, batch_size=batch_size, flip=flip).astype(np.float32))
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def image_weights(img_feats: np.ndarray, faceness: np.ndarray, *, norm_score: bool = True,
                  detector_score: bool = True) -> np.ndarray:
    """The features that are pooled: normalised unless `norm_score`, times the detector score if asked."""
    feats = np.asarray(img_feats, dtype=np.float64)
    if not norm_score:
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        feats = feats / np.where(norms > 0, norms, 1.0)
    if detector_score:
        feats = feats * np.asarray(faceness, dtype=np.float64)[:, None]
    return feats


def template_features(feats: np.ndarray, templates: np.ndarray, medias: np.ndarray):
    """(unique template ids, their L2-normalised features): per template, the sum over its medias of
    the mean of the media's images."""
    from fftrain.evaluation.metrics import l2_normalize

    unique_templates, template_of = np.unique(templates, return_inverse=True)
    groups, group_of = np.unique(np.stack([template_of, medias]), axis=1, return_inverse=True)
    group_of = group_of.reshape(-1)
    media_sums = np.zeros((groups.shape[1], feats.shape[1]))
    np.add.at(media_sums, group_of, feats)
    media_means = media_sums / np.bincount(group_of, minlength=groups.shape[1])[:, None]
    pooled = np.zeros((len(unique_templates), feats.shape[1]))
    np.add.at(pooled, groups[0], media_means)
    return unique_templates, l2_normalize(pooled)


def pair_scores(unique_templates: np.ndarray, template_feats: np.ndarray, pairs: np.ndarray,
                block: int = PAIR_BLOCK) -> np.ndarray:
    """Cosine of each pair's two template features, `block` pairs at a time."""
    rows = np.searchsorted(unique_templates, pairs)
    scores = np.empty(len(pairs))
    for start in range(0, len(pairs), block):
        first, second = rows[start:start + block, 0], rows[start:start + block, 1]
        scores[start:start + block] = np.einsum("ij,ij->i", template_feats[first], template_feats[second])
    return scores


def tar_at_fars(scores: np.ndarray, labels: np.ndarray, fars=IJB_FARS) -> tuple[dict, list[str], tuple]:
    """({str(far): TAR or None}, notes, (fpr, tpr)) from insightface's ROC reading."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels)
    n_neg, n_pos = int((labels == 0).sum()), int((labels == 1).sum())
    if n_neg == 0 or n_pos == 0:
        notes = [f"TAR not measurable: {n_pos} positive and {n_neg} negative pairs"]
        return {str(far): None for far in fars}, notes, (np.zeros(0), np.zeros(0))
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = fpr[::-1], tpr[::-1]  # so that among equally close points argmin takes the highest TPR
    out, notes = {}, []
    for far in fars:
        if far * n_neg < 1:
            out[str(far)] = None
            notes.append(f"TAR@FAR={far:g} not measurable: {n_neg} negative pairs, needs >= {int(np.ceil(1 / far))}")
        else:
            out[str(far)] = float(tpr[np.argmin(np.abs(fpr - far))])
    return out, notes, (fpr, tpr)


def evaluate_features(meta: IjbMeta, img_feats: np.ndarray, *, norm_score: bool = True,
                      detector_score: bool = True) -> tuple[dict, np.ndarray, tuple]:
    """(result dict, pair scores, ROC) from the image features (flip sums, in the 5-point file's order)."""
    feats = image_weights(img_feats, meta.faceness, norm_score=norm_score, detector_score=detector_score)
    unique_templates, template_feats = template_features(feats, meta.templates, meta.medias)
    scores = pair_scores(unique_templates, template_feats, meta.pair_templates)
    tars, notes, roc = tar_at_fars(scores, meta.pair_labels)
    result = {"target": meta.target, "num_images": len(meta.images), "num_templates": int(len(unique_templates)),
              "num_pairs": int(len(scores)), "num_positive_pairs": int(meta.pair_labels.sum()),
              "norm_score": norm_score, "detector_score": detector_score, "tar_at_far": tars, "notes": notes}
    return result, scores, roc


@torch.no_grad()
def evaluate_ijb(model: nn.Module, meta: IjbMeta, *, device, group=None, batch_size: int = 64,
                 flip: bool = True, norm_score: bool = True, detector_score: bool = True,
                 progress: bool = False) -> tuple[dict, np.ndarray, np.ndarray, tuple]:
    """(result, image features, pair scores, ROC (fpr, tpr)), the same on every rank of `group`."""
    from fftrain.distributed import all_gather_object, rank_of, world_size_of
    from fftrain.evaluation.verification import rank_range

    start, stop = rank_range(len(meta.images), rank_of(group), world_size_of(group))
    try:
        local = embed_images(model, meta, range(start, stop), device=device, batch_size=batch_size, flip=flip,
                             progress=progress)
    except IjbError as e:  # gathered like features, so no rank waits for one that has left
        local = str(e)
    parts = all_gather_object(local, group)
    problems = [p for p in parts if isinstance(p, str)]
    if problems:
        raise IjbError(problems[0])
    img_feats = np.concatenate([p for p in parts if p.size])
    result, scores, roc = evaluate_features(meta, img_feats, norm_score=norm_score, detector_score=detector_score)
    result["flip"] = flip
    return result, img_feats, scores, roc


def format_ijb(result: dict) -> str:
    """One table: target | templates | pairs | TAR at each FAR (percent)."""
    header = ["target", "templates", "pairs"] + [f"TAR@FAR={far}" for far in result["tar_at_far"]]
    row = [result["target"], str(result["num_templates"]), str(result["num_pairs"])]
    row += ["n/a" if v is None else f"{100 * v:.2f}" for v in result["tar_at_far"].values()]
    widths = [max(len(h), len(c)) for h, c in zip(header, row)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths),
             " | ".join(c.ljust(w) for c, w in zip(row, widths))]
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])


def save_roc(roc: tuple, result: dict, path: str) -> None:
    """The ROC (TPR against FAR, log scale) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recordio_tools.files import atomic_path

    fpr, tpr = roc
    figure, axes = plt.subplots(figsize=(6, 5))
    try:
        axes.plot(fpr, tpr, lw=1.5, label=result["target"])
        axes.set_xscale("log")
        axes.set_xlim(1e-6, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("False Positive Rate")
        axes.set_ylabel("True Positive Rate")
        axes.grid(True, which="both", alpha=0.3)
        axes.set_title(f"ROC on {result['target']} ({result['num_pairs']} template pairs)")
        axes.legend(loc="lower right")
        with atomic_path(path, make_parents=True) as tmp:
            figure.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(figure)


SAVED_FILES = ("img_feats.npy", "faceness_scores.npy", "scores.npy")


def check_save_dir(folder: str) -> None:
    """--ijb-save must not hold files of these names already (never overwrite what we did not write)."""
    taken = [name for name in SAVED_FILES if os.path.exists(os.path.join(folder, name))]
    if taken:
        raise IjbError(f"{os.path.join(folder, taken[0])}: exists; choose an empty --ijb-save folder")


def save_arrays(folder: str, img_feats: np.ndarray, faceness: np.ndarray, scores: np.ndarray) -> None:
    """img_feats.npy, faceness_scores.npy, scores.npy, each written atomically."""
    from recordio_tools.files import atomic_path

    for name, array in zip(SAVED_FILES, (img_feats, faceness, scores)):
        with atomic_path(os.path.join(folder, name), make_parents=True) as tmp, open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
