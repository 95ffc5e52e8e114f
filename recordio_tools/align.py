"""Face alignment to the standard ArcFace 112x112 template from 5 landmarks.

    >>> points = read_landmarks("landmarks.txt")["id_0001/0.jpg"]      # 5 x 2 array, pixels
    >>> face = align_face(Image.open("raw/id_0001/0.jpg").convert("RGB"), points)   # 112x112

The transform is the least-squares similarity (rotation, uniform scale, translation; Umeyama
1991) from the landmarks to the template, the one insightface's `norm_crop` estimates, applied
with bilinear sampling. Coordinates follow OpenCV: pixel (i, j) has its centre at x=i, y=j.

Landmarks file, either:
- text: one image per line, `relative/path.jpg x1 y1 x2 y2 x3 y3 x4 y4 x5 y5` (spaces, tabs or
  commas between fields; `#` starts a comment), points in the template's order: eye, eye, nose
  tip, mouth corner, mouth corner, each pair with the smaller x (image left) first, as the
  5-point output of RetinaFace / MTCNN lists them;
- JSON: `{"relative/path.jpg": [x1, y1, ..., x5, y5] or [[x1, y1], ..., [x5, y5]], ...}`.
Paths are relative to the image tree's root and use `/`.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from PIL import Image

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
"""Landmark positions of the aligned 112x112 ArcFace crop, pixels."""

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# every number at the end of the line (the path ends with a file name, never with a bare number)
_TRAILING_NUMBERS = re.compile(rf"(?P<numbers>(?:[\s,]+{_NUMBER})+)[\s,]*$")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix M of the similarity that maps points `src` onto `dst` in least squares (Umeyama)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    covariance = dst_centred.T @ src_centred / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    src_variance = (src_centred ** 2).sum() / len(src)
    if src_variance == 0:
        raise ValueError("landmarks are all at one point")
    scale = (singular * signs).sum() / src_variance
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def _pil_inverse_affine(matrix: np.ndarray) -> tuple[float, ...]:
    """PIL's AFFINE data (output -> input) for a forward 2x3 `matrix` in OpenCV pixel coordinates.

    PIL samples output pixel (x, y) at its centre (x + 0.5, y + 0.5) in a frame where pixel centres
    sit at +0.5, so the inverse is conjugated by a half-pixel shift.
    """
    forward = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unhalf = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    pil = half @ inverse @ unhalf
    return tuple(pil[:2].reshape(-1))


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = 112) -> Image.Image:
    """The `size` x `size` crop of `image` with `landmarks` (5 x 2, pixels) moved onto the template."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    template = ARCFACE_TEMPLATE * (size / 112.0)
    matrix = similarity_transform(points, template)
    return image.transform((size, size), Image.AFFINE, _pil_inverse_affine(matrix), resample=Image.BILINEAR)


def _normalise_key(path: str) -> str:
    return os.path.normpath(path.strip()).replace(os.sep, "/").lstrip("/")


def _as_points(values, where: str) -> np.ndarray:
    try:
        points = np.asarray(values, dtype=np.float64).reshape(5, 2)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: expected 10 numbers (5 x,y points), got {values!r}") from None
    if not np.isfinite(points).all():
        raise ValueError(f"{where}: landmarks must be finite numbers, got {points.reshape(-1).tolist()}")
    return points


def _read_json_landmarks(path: str, text: str) -> dict[str, np.ndarray]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ValueError(f"{path}: expected a JSON object {{\"relative/path.jpg\": [10 numbers], ...}}")
    return {_normalise_key(key): (_as_points(values, f"{path}: key {key!r}"), f"{path}: key {key!r}")
            for key, values in body.items()}


def _read_text_landmarks(path: str, text: str) -> dict[str, np.ndarray]:
    landmarks = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _TRAILING_NUMBERS.search(line)
        numbers = [float(v) for v in re.split(r"[\s,]+", match["numbers"].strip(" \t,"))] if match else []
        image = line[:match.start()] if match else line
        if len(numbers) != 10 or not image.strip(" \t,"):
            raise ValueError(f"{path}: line {line_no}: expected 'relative/path.jpg x1 y1 ... x5 y5' (a path and 10 "
                             f"numbers), got {'no path' if not image.strip() else f'{len(numbers)} numbers'}: "
                             f"{line[:80]!r}")
        where = f"{path}: line {line_no}"
        landmarks[_normalise_key(image)] = (_as_points(numbers, where), where)
    return landmarks


def read_landmarks(path: str) -> dict[str, np.ndarray]:
    """Relative image path -> 5 x 2 landmarks, from a text or JSON file (see the module doc).

    Raises ValueError naming the file and the line or key of a malformed entry.
    """
    return {key: points for key, (points, _) in read_landmarks_located(path).items()}


def points_outside(points: np.ndarray, width: int, height: int) -> list[list[float]]:
    """The landmarks (x, y) that lie outside a `width` x `height` image (pixel centres 0..width-1)."""
    points = np.asarray(points, dtype=np.float64).reshape(5, 2)
    outside = (points[:, 0] < 0) | (points[:, 0] > width - 1) | (points[:, 1] < 0) | (points[:, 1] > height - 1)
    return points[outside].tolist()


def read_landmarks_located(path: str) -> dict[str, tuple[np.ndarray, str]]:
    """Like `read_landmarks`, each entry with where it was read ('FILE: line N' or 'FILE: key K')."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: landmarks file not found") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: landmarks file is not UTF-8 text") from None
    if text.lstrip().startswith("{"):
        return _read_json_landmarks(path, text)
    return _read_text_landmarks(path, text)
