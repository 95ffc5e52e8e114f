"""Per-sample augmentation parameters, drawn in Python so that both readers apply the same ones.

For every global step, `step_params` draws the parameters of the whole global batch from
`sharding.step_rng(seed, epoch, step)` and returns this rank's slice. The DALI pipeline receives
them as per-sample argument inputs; the DataLoader reader applies them with PIL and numpy.

- flip: mirror the image left-right with probability 0.5 (`flip=True`, the default).
- strong (`strong=True`, config `data.augment`), each independently per image:
  - resize-blur (p=0.2): resize down to s*size, s ~ U[0.4, 0.9], and back up (bilinear);
  - colour (p=0.5): hue rotation ~ U[-10, 10] degrees, saturation and value scale ~ U[0.7, 1.3],
    applied as one 3x3 matrix in YIQ space (a linear HSV approximation);
  - grey (p=0.1): saturation 0.
Images without an effect get the exact identity (size unchanged, identity matrix), which both
backends reproduce bit for bit. With `strong=True`, DALI's resize and PIL's differ by a few
grey levels near edges, so the readers agree in distribution, not pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fftrain.data.sharding import step_rng

BLUR_P, BLUR_SCALE = 0.2, (0.4, 0.9)
COLOR_P, HUE_DEG, SAT_RANGE, VALUE_RANGE = 0.5, 10.0, (0.7, 1.3), (0.7, 1.3)
GREY_P = 0.1

_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], dtype=np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class StepParams:
    """This rank's augmentation parameters for one step (B samples)."""

    mirror: np.ndarray      # [B] int32, 1 = flip left-right
    blur_size: np.ndarray   # [B, 2] float32 (height, width) to resize down to; the image size = no blur
    color: np.ndarray       # [B, 3, 3] float32 matrix applied to RGB pixels; identity = no change

    def blurred(self, image_size: int) -> np.ndarray:
        """[B] bool: the samples that get the resize-blur."""
        return (self.blur_size != image_size).any(axis=1)

    def recoloured(self) -> np.ndarray:
        """[B] bool: the samples whose colour matrix is not the identity."""
        return (self.color != np.eye(3, dtype=np.float32)).any(axis=(1, 2))


def color_matrix(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    """3x3 RGB -> RGB matrix: rotate the hue, scale saturation and value (in YIQ)."""
    angle = np.deg2rad(hue_deg)
    c, s = np.cos(angle) * saturation, np.sin(angle) * saturation
    yiq = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return (value * _YIQ_TO_RGB @ yiq @ _RGB_TO_YIQ).astype(np.float32)


def color_matrices(hue_deg: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """[m, 3, 3] float32: `color_matrix` of every sample at once (the same bits: the same float64
    operations in the same order, batched)."""
    angle = np.deg2rad(np.asarray(hue_deg, dtype=np.float64))
    c, s = np.cos(angle) * saturation, np.sin(angle) * saturation
    yiq = np.zeros((len(angle), 3, 3))
    yiq[:, 0, 0], yiq[:, 1, 1], yiq[:, 1, 2], yiq[:, 2, 1], yiq[:, 2, 2] = 1.0, c, -s, s, c
    return ((np.asarray(value, dtype=np.float64)[:, None, None] * _YIQ_TO_RGB) @ yiq @ _RGB_TO_YIQ).astype(np.float32)


def step_params(seed: int, epoch: int, step: int, *, shard_id: int, num_shards: int, batch_size: int,
                image_size: int, flip: bool = True, strong: bool = False) -> StepParams:
    """Parameters of rank `shard_id`'s batch at (epoch, step); drawn for the global batch (so every
    rank's slice is the same whatever W), but the colour matrices are built for this rank's slice only."""
    rng = step_rng(seed, epoch, step)
    n = num_shards * batch_size
    mine = slice(shard_id * batch_size, (shard_id + 1) * batch_size)
    mirror = (rng.random(n) < 0.5) if flip else np.zeros(n, dtype=bool)
    sizes = np.full((n, 2), float(image_size), dtype=np.float32)
    colors = np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3)).copy()
    if strong:
        blur = rng.random(n) < BLUR_P
        scale = rng.uniform(*BLUR_SCALE, n)
        sizes[blur] = np.round(image_size * scale[blur])[:, None]
        hue, sat, val = rng.uniform(-HUE_DEG, HUE_DEG, n), rng.uniform(*SAT_RANGE, n), rng.uniform(*VALUE_RANGE, n)
        recolor, grey = rng.random(n) < COLOR_P, rng.random(n) < GREY_P
        hue, sat, val = np.where(recolor, hue, 0.0), np.where(recolor, sat, 1.0), np.where(recolor, val, 1.0)
        sat = np.where(grey, 0.0, sat)
        changed = np.flatnonzero(recolor[mine] | grey[mine]) + mine.start
        colors[changed] = color_matrices(hue[changed], sat[changed], val[changed])
    return StepParams(mirror[mine].astype(np.int32), sizes[mine], colors[mine])


def apply_numpy(image: np.ndarray, params: StepParams, i: int, image_size: int) -> np.ndarray:
    """Sample i's strong augmentation on a uint8 HWC image (the DataLoader reader's path)."""
    from PIL import Image

    height, width = (int(v) for v in params.blur_size[i])
    if (height, width) != image.shape[:2]:
        small = Image.fromarray(image).resize((width, height), Image.BILINEAR)
        image = np.asarray(small.resize((image_size, image_size), Image.BILINEAR))
    matrix = params.color[i]
    if not np.array_equal(matrix, np.eye(3, dtype=np.float32)):
        image = np.clip(np.rint(image.astype(np.float32) @ matrix.T), 0, 255).astype(np.uint8)
    return image
