"""Drawing primitives of the face renderer: the per-image frame (face coordinates <-> pixels), soft
shape masks, blending and colours, the smooth background field, and the camera's resolution loss,
blur, sensor noise and JPEG encoding. Arrays are [B,H,W] (masks, coordinates) and [3,B,H,W] (the
canvas)."""

from __future__ import annotations

import io

import numpy as np

from .world import FACE_UNIT, SIZE


# ---------------------------------------------------------------------------------------------
# The frame, shapes and colours

_EDGE = 1.2 / 30.0  # soft-edge width: about one pixel, in face units
_PIX = SIZE / 2  # pixels per image unit


class _Frame:
    """The per-image similarity transform between face coordinates (u right, v down) and pixels."""

    def __init__(self, roll, scale, shift_x, shift_y):
        self.c, self.s = np.cos(roll), np.sin(roll)
        self.k = scale * FACE_UNIT  # image units per face unit, [B,1,1]
        self.shift_x, self.shift_y = shift_x, shift_y
        grid = (np.arange(SIZE, dtype=np.float32) + 0.5) / _PIX - 1.0
        self.X, self.Y = grid[None, None, :], grid[None, :, None]
        dx, dy = self.X - shift_x, self.Y - shift_y
        self.u = (self.c * dx + self.s * dy) / self.k
        self.v = (-self.s * dx + self.c * dy) / self.k

    def box(self, cu, cv, radius) -> tuple[slice, slice]:
        """Rows and columns holding the disc (cu, cv, radius) (face units) in every image."""
        cu, cv, radius = (np.broadcast_to(np.asarray(a, np.float32), self.k.shape) for a in (cu, cv, radius))
        x = (self.shift_x + self.k * (self.c * cu - self.s * cv) + 1.0) * _PIX
        y = (self.shift_y + self.k * (self.s * cu + self.c * cv) + 1.0) * _PIX
        r = radius * self.k * _PIX + 2.0
        x0, x1 = int(max(0, np.floor((x - r).min()))), int(min(SIZE, np.ceil((x + r).max())))
        y0, y1 = int(max(0, np.floor((y - r).min()))), int(min(SIZE, np.ceil((y + r).max())))
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _shape(u, v, cx, cy, ax, ay, tilt=None, square=0.0):
    """Soft mask of an ellipse (square=0) .. rounded rectangle (square -> 1), antialiased over a pixel."""
    du = (u - cx) / ax
    dv = (v - cy) / ay
    if tilt is not None:
        c, s = np.cos(tilt), np.sin(tilt)
        du, dv = c * du + s * dv * (ay / ax), -s * du * (ax / ay) + c * dv
    r = np.sqrt(du * du + dv * dv)
    if not (np.isscalar(square) and square == 0.0):
        r = r * (1.0 - square) + np.maximum(np.abs(du), np.abs(dv)) * square
    m = (1.0 - r) * (np.minimum(ax, ay) / _EDGE)
    return np.clip(m, 0.0, 1.0, out=m)


def _blend(canvas, mask, colour):
    """canvas [3,B,h,w] <- mask * colour + (1 - mask) * canvas, in place; colour [3,B,1,1] or [3,B,h,w]."""
    canvas += mask[None] * (colour - canvas)


def _rgb(r, g, b) -> np.ndarray:
    """[3,B,1,1] colour from three channels, each [B,1,1] or a scalar."""
    channels = np.broadcast_arrays(*(np.asarray(x, np.float32) for x in (r, g, b)))
    return np.stack(channels).astype(np.float32).reshape(3, -1, 1, 1)


def _lerp(a, b, t):
    return a + (b - a) * t


_UP_LO = np.minimum(np.floor(np.linspace(0, 4, SIZE)).astype(np.intp), 3)
_UP_W = (np.linspace(0, 4, SIZE) - _UP_LO).astype(np.float32)


def _upsample(field: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of 5 control points along `axis` of [3,B,...] to SIZE samples (no BLAS)."""
    shape = [1] * field.ndim
    shape[axis] = SIZE
    w = _UP_W.reshape(shape)
    return np.take(field, _UP_LO, axis=axis) * (1 - w) + np.take(field, _UP_LO + 1, axis=axis) * w


# ---------------------------------------------------------------------------------------------
# The camera


def _downsample(canvas: np.ndarray, factor: int) -> np.ndarray:
    """Block-average [3,B,H,W] over factor x factor pixels and repeat back to full size (SIZE % factor == 0)."""
    low = canvas[:, :, 0::factor, 0::factor].copy()
    for dy in range(factor):
        for dx in range(factor):
            if dy or dx:
                low += canvas[:, :, dy::factor, dx::factor]
    low *= np.float32(1.0 / factor ** 2)
    return low.repeat(factor, axis=2).repeat(factor, axis=3)


def _blur(images: np.ndarray, radius: np.ndarray) -> None:
    """In place: Gaussian blur of every image of [B,3,H,W], std `radius[b]` pixels (none below 0.05)."""
    from scipy import ndimage

    for image, r in zip(images, radius):
        if r > 0.05:
            for axis in (1, 2):
                ndimage.gaussian_filter1d(image, float(r), axis=axis, output=image, truncate=3.0, mode="nearest")


_NOISE_BANK: np.ndarray | None = None


def _noise(rng: np.random.Generator, B: int) -> np.ndarray:
    """[B,3,H,W] unit sensor noise (correlated across channels): random crops of a fixed noise bank."""
    global _NOISE_BANK
    if _NOISE_BANK is None:
        bank = np.random.default_rng(12345).standard_normal((4, 2 * SIZE, 2 * SIZE), dtype=np.float32)
        _NOISE_BANK = (bank[:3] * 0.5 + bank[3:]) / np.float32(np.sqrt(1.25))
    oy, ox = rng.integers(0, SIZE, B), rng.integers(0, SIZE, B)
    sign = rng.choice(np.array([-1.0, 1.0], np.float32), B)
    return np.stack([_NOISE_BANK[:, y:y + SIZE, x:x + SIZE] * s for y, x, s in zip(oy, ox, sign)])


def encode_jpegs(images: np.ndarray, quality: int) -> list[bytes]:
    """JPEG bytes of each uint8 image [B,112,112,3]."""
    from PIL import Image

    out = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
        out.append(buf.getvalue())
    return out
