"""The synthetic six-dataset set: a parametric face renderer, the dataset plan, and the writer.

Run it through the CLI (`recordio_tools synth --out data/synth`, `--tiny` for tests); the
layout it writes and how the faces are made are described in docs/synthetic_data.md.

Everything is a pure function of the seed: a person's latent comes from
`np.random.default_rng([seed, 1, person])`, an image batch from `[seed, 2, dataset, local label]`,
so the bytes written do not depend on the number of worker processes.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

SIZE = 112  # output images are SIZE x SIZE RGB, the insightface aligned-crop size
FACE_UNIT = 30.0 / (SIZE / 2)  # one face unit (about half a face width) in image coordinates [-1, 1]

# (name, identities, images) of the six public datasets, as the paper lists them.
PAPER_DATASETS: tuple[tuple[str, int, int], ...] = (
    ("asian_celeb", 94_000, 2_800_000),
    ("casia_webface", 10_500, 500_000),
    ("celeba", 10_200, 200_000),
    ("deepglint", 180_900, 6_800_000),
    ("ms1m", 85_700, 5_800_000),
    ("vggface2", 8_600, 3_100_000),
)
DATASET_NAMES = tuple(name for name, _, _ in PAPER_DATASETS)

# Seed streams: np.random.default_rng([seed, STREAM, ...]).
_CLUSTERS, _PERSON, _IMAGES, _VERIFICATION, _ORDER, _PLAN, _NOISE_PLAN, _NOISE_IMAGES = range(8)


# ---------------------------------------------------------------------------------------------
# Styles: what makes the six datasets look like six domains.


@dataclass(frozen=True)
class Style:
    """How one dataset's images look, beyond the person and the per-image nuisance."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour cast, per-channel gain
    saturation: float = 1.0  # 1 = unchanged, 0 = grey
    gamma: float = 1.0  # applied to [0, 1] intensities
    contrast: float = 1.0  # around mid grey
    blur: float = 0.4  # Gaussian blur radius, pixels (plus up to 0.5 px per image)
    noise: float = 3.0  # Gaussian noise std, grey levels of 255 (plus up to 3 per image)
    downsample: int = 1  # resolution loss: averaged over downsample x downsample blocks, then upsampled
    jpeg_quality: int = 90
    pose: float = 1.0  # multiplier of the pose nuisance (roll, yaw, pitch, shift)
    light: float = 1.0  # multiplier of the lighting nuisance
    occlusion: float = 0.25  # probability of an occluder per image
    background: tuple[float, float, float] = (150.0, 150.0, 150.0)  # mean background colour


STYLES: dict[str, Style] = {
    "asian_celeb": Style(gain=(1.07, 1.0, 0.9), blur=0.6, noise=4.0, jpeg_quality=85,
                         background=(175, 150, 125)),
    "casia_webface": Style(gain=(0.96, 1.05, 0.95), downsample=2, blur=0.3, noise=5.0, jpeg_quality=75,
                           pose=1.2, background=(120, 130, 120)),
    "celeba": Style(saturation=1.3, gamma=0.85, contrast=1.1, blur=0.0, noise=2.0, jpeg_quality=92, light=0.7,
                    background=(190, 170, 190)),
    "deepglint": Style(gain=(0.9, 0.98, 1.1), blur=0.8, noise=6.0, jpeg_quality=80, pose=0.9,
                       background=(110, 120, 150)),
    "ms1m": Style(saturation=0.7, contrast=0.85, blur=0.5, noise=3.0, jpeg_quality=88, light=1.2,
                  background=(140, 140, 140)),
    "vggface2": Style(blur=0.4, noise=4.0, jpeg_quality=90, pose=1.5, light=1.3, occlusion=0.35,
                      background=(100, 90, 80)),
    "verification": Style(blur=0.4, noise=3.0, jpeg_quality=90, pose=1.1, occlusion=0.2),
}


# ---------------------------------------------------------------------------------------------
# Identities: a latent vector and what it means.

LATENT_DIM = 40
NUM_CLUSTERS = 8  # "look-alike families": persons of one cluster share part of their latent
CLUSTER_WEIGHT = 0.6  # latent = w * cluster centre + sqrt(1 - w^2) * own part (unit variance either way)
IDENTITY_SPREAD = 0.9  # default: multiplies every identity parameter's spread around the population mean
IMAGE_DRIFT = 0.25  # default: per-image std of the latent drift (hair, beard, make-up change between photos)


def cluster_centres(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, _CLUSTERS]).standard_normal((NUM_CLUSTERS, LATENT_DIM)).astype(np.float32)


def person_latent(seed: int, person: int, centres: np.ndarray | None = None) -> np.ndarray:
    """The latent vector of a person (LATENT_DIM standard-normal entries, correlated within a cluster)."""
    centres = cluster_centres(seed) if centres is None else centres
    rng = np.random.default_rng([seed, _PERSON, person])
    cluster = rng.integers(NUM_CLUSTERS)
    own = rng.standard_normal(LATENT_DIM).astype(np.float32)
    return (CLUSTER_WEIGHT * centres[cluster] + math.sqrt(1 - CLUSTER_WEIGHT ** 2) * own).astype(np.float32)


# latent index of each parameter (in order); parameters are mean + spread * latent.
_P = {name: i for i, name in enumerate([
    "head_w", "head_h", "head_y", "jaw", "square", "eye_x", "eye_y", "eye_w", "eye_h", "eye_tilt",
    "brow_d", "brow_w", "brow_t", "brow_tilt", "brow_curve", "nose_y", "nose_w", "mouth_y", "mouth_w", "lip_t",
    "smile", "skin_tone", "skin_hue", "hair_light", "hair_red", "hairline", "hair_vol", "hair_long", "hair_wave",
    "hair_part", "iris", "beard", "glasses", "cheek", "ear", "tex_a", "tex_b", "tex_c", "moles", "lip_red",
])}
assert len(_P) == LATENT_DIM


_FIXED = ("glasses", "iris", "moles", "tex_a", "tex_b", "tex_c")


# ---------------------------------------------------------------------------------------------
# Rendering. Arrays are [B,H,W] (masks, coordinates) and [3,B,H,W] (the canvas); small features
# are drawn inside a pixel box that holds them in every image of the batch, so most of the work
# is on a fraction of the frame.

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


def render_faces(latents: np.ndarray, style: Style, rng: np.random.Generator,
                 identity_spread: float = IDENTITY_SPREAD) -> np.ndarray:
    """Render one image per row of `latents` [B, LATENT_DIM] (already drifted) -> uint8 [B,112,112,3].

    The latent fixes the person (geometry, colours, hair, accessories, skin texture); `rng` draws the
    per-image nuisance (pose, expression, lighting, occluder, background) scaled by `style`, and the
    style's camera (colour cast, resolution loss, blur, noise) is applied; only JPEG encoding is left.
    `identity_spread` scales how far persons lie from the average face (smaller: harder to tell apart).
    """
    z = np.asarray(latents, dtype=np.float32)
    B = z.shape[0]

    def par(name: str, mean: float, spread: float) -> np.ndarray:
        """[B,1,1] identity parameter: population mean + spread * the person's latent entry."""
        return (mean + identity_spread * spread * z[:, _P[name]])[:, None, None]

    def col(a):
        return np.asarray(a, dtype=np.float32).reshape(B, 1, 1)

    # --- per-image nuisance ------------------------------------------------------------------
    roll = col(rng.normal(0, 0.11, B) * style.pose)  # radians (~6 degrees)
    scale = col(np.exp(rng.normal(0, 0.07, B)))
    shift_x = col(rng.normal(0, 0.045, B) * style.pose)
    shift_y = col(rng.normal(0, 0.045, B) * style.pose)
    yaw = col(np.clip(rng.normal(0, 0.3, B) * style.pose, -0.75, 0.75))
    pitch = col(np.clip(rng.normal(0, 0.15, B) * style.pose, -0.4, 0.4))
    mouth_open = col(np.abs(rng.normal(0, 0.35, B)))
    smile_img = col(rng.normal(0, 0.5, B))
    eye_open = col(np.clip(1 - np.abs(rng.normal(0, 0.25, B)), 0.15, 1.0))
    brow_raise = col(rng.normal(0, 0.035, B))
    gaze = col(rng.normal(0, 0.03, B))
    frame = _Frame(roll, scale, shift_x, shift_y)
    u, v = frame.u, frame.v

    # --- identity parameters -----------------------------------------------------------------
    head_w = par("head_w", 1.05, 0.06)
    head_h = par("head_h", 1.42, 0.07)
    head_y = par("head_y", 0.28, 0.04) + pitch * 0.05
    jaw = np.clip(par("jaw", 0.22, 0.08), 0.0, 0.5)
    square = np.clip(par("square", 0.12, 0.1), 0.0, 0.4)
    eye_x = par("eye_x", 0.58, 0.045)
    eye_y = par("eye_y", -0.12, 0.05) - pitch * 0.12
    eye_w = par("eye_w", 0.2, 0.022)
    eye_h = par("eye_h", 0.095, 0.014) * eye_open
    eye_tilt = par("eye_tilt", 0.0, 0.09)
    brow_d = par("brow_d", 0.26, 0.04) + brow_raise
    brow_w = par("brow_w", 0.27, 0.03)
    brow_t = np.clip(par("brow_t", 0.05, 0.014), 0.02, 0.1)
    brow_tilt = par("brow_tilt", 0.08, 0.1)
    brow_curve = par("brow_curve", 0.7, 0.4)
    nose_y = par("nose_y", 0.5, 0.055) - pitch * 0.2
    nose_w = par("nose_w", 0.17, 0.028)
    mouth_y = par("mouth_y", 0.92, 0.06) - pitch * 0.25
    mouth_w = par("mouth_w", 0.36, 0.045)
    lip_t = np.clip(par("lip_t", 0.065, 0.014), 0.03, 0.12)
    smile = par("smile", 0.0, 0.25) + smile_img * 0.6
    tone = np.clip(par("skin_tone", 0.45, 0.22), 0.0, 1.0)
    hue = par("skin_hue", 0.0, 0.05)
    hair_light = np.clip(par("hair_light", 0.25, 0.25), 0.0, 1.0)
    hair_red = np.clip(par("hair_red", 0.0, 0.3), -0.2, 0.6)
    hairline = par("hairline", -0.72, 0.12)
    hair_vol = np.clip(par("hair_vol", 1.0, 0.12), 0.6, 1.4)
    hair_long = np.clip(par("hair_long", 0.2, 0.6), 0.0, 1.2)
    hair_wave = par("hair_wave", 0.0, 0.08)
    hair_part = par("hair_part", 0.0, 0.2)
    iris = z[:, _P["iris"]][:, None, None]
    beard = np.clip(par("beard", -0.4, 0.6), 0.0, 0.8)
    glasses = (z[:, _P["glasses"]] > 1.25).astype(np.float32)[:, None, None]
    cheek = np.clip(par("cheek", 0.15, 0.15), 0.0, 0.5)
    ear = par("ear", 1.0, 0.15)
    lip_red = np.clip(par("lip_red", 0.4, 0.25), 0.0, 1.0)

    # yaw: features move toward the turned side by their depth; the far side narrows
    far = 1 - 0.35 * np.abs(yaw)
    feat = yaw * 0.32  # shift of the inner features, face units
    head_x = -yaw * 0.06

    skin = _rgb(_lerp(238, 112, tone) + hue * 120, _lerp(200, 72, tone), _lerp(178, 48, tone) - hue * 80)
    hair_rgb = _rgb(_lerp(25, 215, hair_light) + hair_red * 120, _lerp(20, 185, hair_light) + hair_red * 25,
                    _lerp(18, 130, hair_light) - hair_red * 30)
    iris_rgb = _rgb(np.where(iris > 0.6, 70, np.where(iris < -0.8, 90, 70)),
                    np.where(iris > 0.6, 110, np.where(iris < -0.8, 110, 45)),
                    np.where(iris > 0.6, 160, np.where(iris < -0.8, 70, 30)))
    lip_rgb = skin * _rgb(_lerp(0.85, 0.95, lip_red), _lerp(0.7, 0.45, lip_red), _lerp(0.7, 0.5, lip_red))
    dark = _rgb(30, 30, 35)

    # --- background: a colour, a gradient and a smooth random field ---------------------------
    bg = np.asarray(style.background, np.float32)[:, None] + rng.normal(0, 30, (3, B)).astype(np.float32)
    field = (rng.normal(0, 14, (3, B, 5, 5)) + rng.normal(0, 22, (1, B, 5, 5))).astype(np.float32)
    canvas = _upsample(_upsample(field, axis=2), axis=3)
    canvas += bg[:, :, None, None]
    bg_dir = rng.uniform(0, 2 * np.pi, B).astype(np.float32)
    canvas += ((np.cos(bg_dir)[:, None, None] * frame.X + np.sin(bg_dir)[:, None, None] * frame.Y)
               * col(rng.uniform(0, 40, B)))[None]

    # --- hair behind the head, neck, ears ----------------------------------------------------
    hx = head_x + hair_part * 0.1
    back_h = head_h * hair_vol * (1.0 + 0.55 * hair_long)
    back_y = head_y - head_h * 0.12 + (back_h - head_h * hair_vol) * 0.7
    _blend(canvas, _shape(u, v, hx, back_y, head_w * 1.12 * hair_vol, back_h, square=0.15), hair_rgb)
    neck = _shape(u, v, head_x * 0.5, head_y + head_h * 1.05, head_w * 0.55, head_h * 0.6, square=0.5)
    _blend(canvas, neck, skin * 0.85)
    ear_y = eye_y + 0.3
    for side in (-1.0, 1.0):
        ear_x = head_x + side * head_w * (0.97 - 0.12 * side * yaw)
        rows, cols = frame.box(ear_x, ear_y, 0.35 * ear)
        _blend(canvas[:, :, rows, cols], _shape(u[:, rows, cols], v[:, rows, cols], ear_x, ear_y, 0.15 * ear,
                                                0.28 * ear), skin * 0.92)

    # --- head with skin texture, cheeks, beard, moles, fringe ---------------------------------
    rows, cols = frame.box(head_x, head_y, head_h * 1.05)
    hu, hv, hc = u[:, rows, cols], v[:, rows, cols], canvas[:, :, rows, cols]
    du, dv = hu - head_x, hv - head_y
    taper = 1.0 - jaw * np.clip(dv / head_h, 0.0, 1.0) ** 2
    head = _shape(du / taper, dv, 0.0, 0.0, head_w, head_h, square=square)
    ta, tb, tc = (z[:, _P[n]][:, None, None] for n in ("tex_a", "tex_b", "tex_c"))
    tex = (ta * np.cos(2.1 * hu + 1.3 * hv + tb) + tb * np.cos(1.4 * hu - 2.6 * hv + tc)
           + tc * np.cos(3.3 * hv + 0.7 * hu + ta))
    _blend(hc, head, skin * (1.0 + 0.035 * tex)[None])
    head_rows, head_cols = rows, cols

    def head_full(r: slice, c: slice) -> np.ndarray:
        """The head mask on the rows/columns r, c of the frame (zero outside the head box)."""
        full = np.zeros((B, SIZE, SIZE), np.float32)
        full[:, head_rows, head_cols] = head
        return full[:, r, c]

    for side in (-1.0, 1.0):
        cx, cy = head_x + feat + side * 0.62 * far ** side, nose_y + 0.1
        r, c = frame.box(cx, cy, 0.32)
        _blend(canvas[:, :, r, c], head_full(r, c) * _shape(u[:, r, c], v[:, r, c], cx, cy, 0.3, 0.22) * cheek,
               skin * _rgb(1.05, 0.85, 0.85))
    if beard.max() > 0:
        _blend(hc, head * np.clip((hv - (nose_y + 0.18)) / 0.15, 0.0, 1.0) * beard, hair_rgb * 0.9 + skin * 0.1)
    n_moles = np.clip(z[:, _P["moles"]], 0, 3).astype(np.int32)
    zm, za, zb = (z[:, _P[n]] for n in ("moles", "tex_a", "tex_b"))
    for k in range(int(n_moles.max())):
        present = (n_moles > k).astype(np.float32)[:, None, None]
        cx = head_x + feat + col(0.65 * np.sin(2.1 * k + 7.3 * zm + 3.1 * za))
        cy = head_y + col(0.6 * np.sin(1.7 * k + 5.9 * zb + 2.3 * zm))
        r, c = frame.box(cx, cy, 0.05)
        mole = _shape(u[:, r, c], v[:, r, c], cx, cy, 0.035, 0.035) * present * head_full(r, c)
        _blend(canvas[:, :, r, c], mole, skin * 0.55)
    line = head_y - head_h + (hairline + 1.0) * 0.55 * head_h + hair_wave * np.cos(6.0 * du) + hair_part * 0.25 * du
    fringe = head * np.clip((line - hv) / 0.06, 0.0, 1.0) * np.clip((hair_vol - 0.5) * 2, 0.0, 1.0)
    _blend(hc, fringe, hair_rgb)

    # --- eyes, brows, glasses ----------------------------------------------------------------
    for side in (-1.0, 1.0):
        narrow = far ** (side * np.sign(yaw + 1e-6))
        ex = head_x + feat + side * eye_x * (1 - 0.25 * np.abs(yaw)) + 0.05 * yaw * side
        rows, cols = frame.box(ex, eye_y - 0.12, 0.5)
        eu, ev, ec = u[:, rows, cols], v[:, rows, cols], canvas[:, :, rows, cols]
        tilt = -side * eye_tilt
        sclera = _shape(eu, ev, ex, eye_y, eye_w * narrow, eye_h, tilt)
        _blend(ec, sclera, _rgb(235, 230, 225))
        ix = ex + gaze + yaw * 0.03
        _blend(ec, _shape(eu, ev, ix, eye_y, 0.075, 0.075) * sclera, iris_rgb)
        _blend(ec, _shape(eu, ev, ix, eye_y, 0.035, 0.035) * sclera, _rgb(10, 10, 10))
        _blend(ec, _shape(eu, ev, ex, eye_y - eye_h * 0.75, eye_w * narrow * 1.05, 0.028, tilt) * 0.8, skin * 0.45)
        bx = ex + side * 0.03
        du_b = eu - bx
        by = eye_y - brow_d + brow_curve * 0.5 * du_b ** 2 - side * brow_tilt * du_b
        _blend(ec, _shape(eu, ev, bx, by, brow_w * narrow, brow_t) * 0.9, hair_rgb * 0.8)
        if glasses.max() > 0:
            ring = (_shape(eu, ev, ex, eye_y, eye_w * narrow * 1.5, 0.2)
                    - _shape(eu, ev, ex, eye_y, eye_w * narrow * 1.5 - 0.04, 0.16))
            _blend(ec, np.clip(ring, 0, 1) * glasses, dark)
    if glasses.max() > 0:
        rows, cols = frame.box(head_x + feat, eye_y, 0.2)
        _blend(canvas[:, :, rows, cols], _shape(u[:, rows, cols], v[:, rows, cols], head_x + feat, eye_y - 0.04,
                                                0.12, 0.02) * glasses, dark)

    # --- nose --------------------------------------------------------------------------------
    nx = head_x + feat * 1.25
    rows, cols = frame.box(nx, (eye_y + nose_y) / 2, 0.55)
    nu, nv, nc = u[:, rows, cols], v[:, rows, cols], canvas[:, :, rows, cols]
    bridge = _shape(nu, nv, nx + 0.04 * np.sign(yaw), (eye_y + nose_y) / 2, nose_w * 0.45, (nose_y - eye_y) / 2)
    _blend(nc, bridge * 0.35, skin * 0.7)
    _blend(nc, _shape(nu, nv, nx, nose_y, nose_w, 0.09) * 0.5, skin * 0.78)
    for side in (-1.0, 1.0):
        _blend(nc, _shape(nu, nv, nx + side * nose_w * 0.55, nose_y + 0.05, 0.045, 0.028) * 0.9, skin * 0.35)

    # --- mouth -------------------------------------------------------------------------------
    mx = head_x + feat * 1.1
    rows, cols = frame.box(mx, mouth_y, 0.6)
    mu, mv, mc = u[:, rows, cols], v[:, rows, cols], canvas[:, :, rows, cols]
    dm = mu - mx
    mv = mv + smile * 0.45 * dm ** 2 / (mouth_w + 1e-3)
    opening = lip_t * 0.2 + mouth_open * 0.09
    _blend(mc, _shape(mu, mv, mx, mouth_y - opening / 2 - lip_t * 0.5, mouth_w * far, lip_t * 0.8), lip_rgb)
    _blend(mc, _shape(mu, mv, mx, mouth_y + opening / 2 + lip_t * 0.6, mouth_w * far * 0.85, lip_t), lip_rgb * 1.05)
    _blend(mc, _shape(mu, mv, mx, mouth_y, mouth_w * far * 0.9, opening), _rgb(60, 25, 25))

    # --- occluder: a random patch, sunglasses or a face mask, on a fraction of the images -----
    occluded = np.flatnonzero(rng.random(B) < style.occlusion)
    kind = rng.integers(0, 3, B)
    occ_rgb = rng.uniform(20, 235, (3, B)).astype(np.float32)
    ox, oy = rng.uniform(-1.1, 1.1, B).astype(np.float32), rng.uniform(-0.8, 1.4, B).astype(np.float32)
    ow, oh = rng.uniform(0.3, 0.8, B).astype(np.float32), rng.uniform(0.3, 0.8, B).astype(np.float32)
    for i in occluded:
        ui, vi = u[i], v[i]
        if kind[i] == 0:
            m = _shape(ui, vi, ox[i], oy[i], ow[i], oh[i], square=0.8)
            colour = occ_rgb[:, i, None, None]
        elif kind[i] == 1:
            m = _shape(ui, vi, head_x[i] + feat[i], eye_y[i], head_w[i] * 1.05, 0.17, square=0.6)
            colour = np.full((3, 1, 1), 25, np.float32)
        else:
            m = _shape(ui, vi, head_x[i] + feat[i] * 0.5, mouth_y[i] - 0.05, head_w[i] * 0.9, 0.55, square=0.4)
            colour = occ_rgb[:, i, None, None]
        canvas[:, i] += m[None] * (colour - canvas[:, i])

    # --- lighting and the dataset's colour style ---------------------------------------------
    light_dir = rng.uniform(0, 2 * np.pi, B).astype(np.float32)
    strength = col(rng.uniform(0, 0.55, B) * style.light)
    brightness = col(np.exp(rng.normal(0, 0.14 * style.light, B)))
    shade = (1.0 + strength * (np.cos(light_dir)[:, None, None] * frame.X
                               + np.sin(light_dir)[:, None, None] * frame.Y)) * brightness
    gain = (np.exp(rng.normal(0, 0.04, (3, B))) * np.asarray(style.gain)[:, None]).astype(np.float32)
    canvas *= shade[None]
    canvas *= gain[:, :, None, None]
    if style.saturation != 1.0:
        grey = canvas.mean(axis=0, keepdims=True)
        canvas = grey + style.saturation * (canvas - grey)
    if style.contrast != 1.0:
        canvas = 128.0 + style.contrast * (canvas - 128.0)
    if style.gamma != 1.0:
        canvas = 255.0 * np.clip(canvas / 255.0, 0.0, 1.0) ** style.gamma

    # --- camera: resolution loss, blur, sensor noise -----------------------------------------
    if style.downsample > 1:
        canvas = _downsample(canvas, style.downsample)
    images = np.ascontiguousarray(canvas.transpose(1, 0, 2, 3))  # [B,3,H,W]
    _blur(images, style.blur + rng.uniform(0, 0.5, B))
    sigma = (style.noise + rng.uniform(0, 3, B)).astype(np.float32)
    images += _noise(rng, B) * sigma[:, None, None, None]
    images += 0.5
    return np.clip(images, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


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


RENDER_CHUNK = 8  # images rendered together; small enough for the arrays to stay in cache


def render_person(latent: np.ndarray, num_images: int, style: Style, rng: np.random.Generator,
                  jpeg_quality: int | None = None, identity_spread: float = IDENTITY_SPREAD,
                  image_drift: float = IMAGE_DRIFT) -> list[bytes]:
    """`num_images` JPEGs of one person: the latent drifted per image, then rendered and finished."""
    z = latent[None, :] + image_drift * rng.standard_normal((num_images, LATENT_DIM)).astype(np.float32)
    # the categorical attributes (glasses, iris colour), moles and skin texture follow the person, not the drift
    for name in _FIXED:
        z[:, _P[name]] = latent[_P[name]]
    out: list[bytes] = []
    for start in range(0, num_images, RENDER_CHUNK):
        images = render_faces(z[start:start + RENDER_CHUNK], style, rng, identity_spread)
        out += encode_jpegs(images, jpeg_quality or style.jpeg_quality)
    return out


# ---------------------------------------------------------------------------------------------
# The dataset plan: who is in which dataset, how many images each, which pairs to verify.


@dataclass
class SynthConfig:
    """What `recordio_tools synth` generates. Identity and image counts are totals over the six datasets
    unless said otherwise."""

    seed: int = 0
    """everything (persons, images, plan) is a function of the seed"""
    ids: int = 600
    """training identities over the six datasets, split in the paper's proportions"""
    min_ids: int = 40
    """floor on one dataset's identities (the paper's small datasets would otherwise vanish)"""
    images_per_id: float = 0.0
    """mean images per identity in every dataset; 0 = each dataset's paper ratio, clipped below"""
    min_images_per_id: float = 8.0
    """lower clip of the paper ratio (CelebA's is 19.6)"""
    max_images_per_id: float = 40.0
    """upper clip of the paper ratio (VGGFace2's is 360)"""
    overlap: float = 0.12
    """fraction of each dataset's identities that are also in another dataset"""
    verification_pairs: int = 300
    """pairs in verification.bin, half positive"""
    verification_ids: int = 150
    """held-out identities (never in training) the pairs are drawn from"""
    shards: int = 2
    """shards per dataset"""
    jpeg_quality: int = 0
    """JPEG quality for every image; 0 = each dataset's style (75..92)"""
    identity_spread: float = IDENTITY_SPREAD
    """how far persons lie from the average face, relative to the built-in spreads; lower is harder"""
    image_drift: float = IMAGE_DRIFT
    """per-image change of a person's latent (hair, beard, make-up between photos); higher is harder"""
    workers: int = 2
    """rendering processes; 1 = render in this process. Output bytes do not depend on it."""
    noise_mislabel: float = 0.0
    """planted label noise: fraction of each dataset's images filed under another identity of that dataset"""
    noise_duplicates: float = 0.0
    """planted label noise: fraction of each dataset's identities that are a second label of another of its identities"""
    noise_leaked_ids: int = 0
    """planted leakage: verification identities that are also training identities (one dataset each)"""

    def __post_init__(self):
        checks = [
            (self.ids >= 6 * self.min_ids, f"ids={self.ids} must be at least 6 x min_ids={self.min_ids}"),
            (self.min_ids >= 2, f"min_ids={self.min_ids} must be >= 2"),
            (self.images_per_id == 0 or self.images_per_id >= 2, f"images_per_id={self.images_per_id} must be 0 "
                                                                  "(paper ratios) or >= 2"),
            (2 <= self.min_images_per_id <= self.max_images_per_id,
             f"need 2 <= min_images_per_id={self.min_images_per_id} <= max_images_per_id={self.max_images_per_id}"),
            (0.0 <= self.overlap <= 0.5, f"overlap={self.overlap} must be in [0, 0.5]"),
            (self.verification_pairs >= 2, f"verification_pairs={self.verification_pairs} must be >= 2"),
            (self.verification_ids >= 2, f"verification_ids={self.verification_ids} must be >= 2"),
            (self.shards >= 1, f"shards={self.shards} must be >= 1"),
            (self.jpeg_quality == 0 or 1 <= self.jpeg_quality <= 100,
             f"jpeg_quality={self.jpeg_quality} must be 0 (style) or in [1, 100]"),
            (self.workers >= 1, f"workers={self.workers} must be >= 1"),
            (self.identity_spread > 0, f"identity_spread={self.identity_spread} must be > 0"),
            (self.image_drift >= 0, f"image_drift={self.image_drift} must be >= 0"),
            (0.0 <= self.noise_mislabel <= 0.2, f"noise_mislabel={self.noise_mislabel} must be in [0, 0.2]"),
            (0.0 <= self.noise_duplicates <= 0.2, f"noise_duplicates={self.noise_duplicates} must be in [0, 0.2]"),
            (0 <= self.noise_leaked_ids <= self.verification_ids,
             f"noise_leaked_ids={self.noise_leaked_ids} must be in [0, verification_ids={self.verification_ids}]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def tiny_config(**overrides) -> SynthConfig:
    """The `--tiny` preset: 30 identities per dataset, about 6 images each; for tests (a few seconds)."""
    base = dict(ids=180, min_ids=30, images_per_id=6.0, verification_pairs=40, verification_ids=30, shards=1)
    base.update(overrides)
    return SynthConfig(**base)


@dataclass
class DatasetPlan:
    name: str
    class_offset: int
    persons: list[int]  # person of each local label
    image_counts: list[int]  # images of each local label

    @property
    def num_classes(self) -> int:
        return len(self.persons)

    @property
    def num_images(self) -> int:
        return sum(self.image_counts)


@dataclass
class SynthPlan:
    config: SynthConfig
    datasets: list[DatasetPlan]
    groups: list[list[tuple[int, int]]]  # each: (dataset index, local label) of one person
    verification_persons: list[int]
    pairs: list[tuple[int, int, bool]]  # (person a, person b, same)

    @property
    def num_images(self) -> int:
        return sum(d.num_images for d in self.datasets)


def allocate_ids(total: int, floor: int, weights: Sequence[float]) -> list[int]:
    """Split `total` in proportion to `weights` with every share >= `floor` (largest remainders)."""
    n = len(weights)
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        remaining = total - sum(fixed.values())
        weight = sum(weights[i] for i in free)
        shares = {i: remaining * weights[i] / weight for i in free}
        low = [i for i in free if shares[i] < floor]
        if not low:
            break
        for i in low:
            fixed[i] = floor
    counts = {i: int(math.floor(shares[i])) for i in free}
    left = remaining - sum(counts.values())
    for i in sorted(free, key=lambda i: (counts[i] - shares[i], i))[:left]:
        counts[i] += 1
    counts.update(fixed)
    return [counts[i] for i in range(n)]


def mean_images_per_id(config: SynthConfig) -> list[float]:
    if config.images_per_id:
        return [float(config.images_per_id)] * len(PAPER_DATASETS)
    return [min(config.max_images_per_id, max(config.min_images_per_id, images / ids))
            for _, ids, images in PAPER_DATASETS]


def _plant_overlaps(sizes: Sequence[int], fraction: float, rng: np.random.Generator) -> list[list[int]]:
    """Groups of dataset indices, one per shared person, so that about `fraction` of each dataset's
    identities are shared; mostly pairs of datasets, about one in six a triple."""
    remaining = np.array([int(round(fraction * s)) for s in sizes])
    groups = []
    while remaining.sum() > 0:
        first = int(rng.choice(np.flatnonzero(remaining == remaining.max())))
        others = np.flatnonzero((remaining > 0) & (np.arange(len(sizes)) != first))
        if len(others) == 0:
            # the last slots: share with a dataset that still has unshared identities
            used = np.zeros(len(sizes), int)
            for g in groups:
                used[g] += 1
            others = np.flatnonzero((used + remaining < np.asarray(sizes)) & (np.arange(len(sizes)) != first))
            if len(others) == 0:
                break
            group = [first, int(rng.choice(others))]
        else:
            k = 2 if len(others) == 1 or rng.random() > 1 / 6 else 3
            p = remaining[others] / remaining[others].sum()
            group = [first] + [int(x) for x in rng.choice(others, size=k - 1, replace=False, p=p)]
        for d in group:
            remaining[d] = max(0, remaining[d] - 1)
        groups.append(sorted(group))
    return groups


def _image_counts(mean: float, n: int, rng: np.random.Generator) -> list[int]:
    """Images per identity: log-normal around `mean` (long-tailed like the real sets), at least 2."""
    counts = np.round(mean * np.exp(rng.normal(-0.06, 0.35, n)))
    return np.clip(counts, max(2, round(0.4 * mean)), round(2.5 * mean)).astype(int).tolist()


def make_plan(config: SynthConfig) -> SynthPlan:
    rng = np.random.default_rng([config.seed, _PLAN])
    sizes = allocate_ids(config.ids, config.min_ids, [ids for _, ids, _ in PAPER_DATASETS])
    means = mean_images_per_id(config)
    shared = _plant_overlaps(sizes, config.overlap, rng)
    persons: list[list[int]] = [[] for _ in sizes]
    next_person = 0
    for group in shared:
        for d in group:
            persons[d].append(next_person)
        next_person += 1
    for d, size in enumerate(sizes):
        while len(persons[d]) < size:
            persons[d].append(next_person)
            next_person += 1
    datasets, offset = [], 0
    where: dict[int, list[tuple[int, int]]] = {}
    for d, ((name, _, _), size, mean) in enumerate(zip(PAPER_DATASETS, sizes, means)):
        order = rng.permutation(persons[d]).tolist()
        for local, person in enumerate(order):
            where.setdefault(person, []).append((d, local))
        datasets.append(DatasetPlan(name, offset, order, _image_counts(mean, size, rng)))
        offset += size
    groups = [where[p] for p in sorted(where) if len(where[p]) > 1]

    held_out = list(range(next_person, next_person + config.verification_ids))
    n_pos = config.verification_pairs // 2
    pos_persons = rng.permutation(np.resize(rng.permutation(held_out), n_pos)).tolist()
    pairs = [(p, p, True) for p in pos_persons]
    for _ in range(config.verification_pairs - n_pos):
        a, b = rng.choice(held_out, size=2, replace=False).tolist()
        pairs.append((a, b, False))
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    return SynthPlan(config, datasets, groups, held_out, pairs)


# ---------------------------------------------------------------------------------------------
# Planted label noise and leakage (all off by default; the plan above is then untouched).

NOISE_FILE = "noise.json"


@dataclass
class NoisePlan:
    """What `plant_noise` changed; written as ground truth to noise.json."""

    wrong: dict[tuple[int, int], list[int]]
    """(dataset, local label) -> the local label whose person each wrongly filed image shows"""
    duplicates: list[tuple[int, int, int]]
    """(dataset, local label, local label): one person filed under two labels of one dataset"""
    leaked: list[tuple[int, int, int]]
    """(verification person, dataset, local label): a held-out person who is also a training class"""

    @property
    def active(self) -> bool:
        return bool(self.wrong or self.duplicates or self.leaked)


def _free_classes(plan: SynthPlan) -> list[list[int]]:
    """Per dataset, the local labels of persons in no planted cross-dataset overlap group."""
    shared = {tuple(m) for g in plan.groups for m in g}
    return [[local for local in range(ds.num_classes) if (d, local) not in shared]
            for d, ds in enumerate(plan.datasets)]


def _plant_duplicates(plan: SynthPlan, free: list[list[int]], rng) -> list[tuple[int, int, int]]:
    duplicates = []
    for d, ds in enumerate(plan.datasets):
        n = min(int(round(plan.config.noise_duplicates * ds.num_classes)), len(free[d]) // 2)
        picked = [int(x) for x in rng.choice(free[d], size=2 * n, replace=False)]
        for keep, dup in zip(picked[:n], picked[n:]):
            ds.persons[dup] = ds.persons[keep]
            duplicates.append((d, min(keep, dup), max(keep, dup)))
        free[d] = [local for local in free[d] if local not in set(picked)]
    return sorted(duplicates)


def _plant_leaks(plan: SynthPlan, free: list[list[int]], rng) -> list[tuple[int, int, int]]:
    n = plan.config.noise_leaked_ids
    pool = [(d, local) for d in range(len(plan.datasets)) for local in free[d]]
    if n > len(pool):
        raise ValueError(f"noise_leaked_ids={n}: only {len(pool)} training classes are free to hold a leaked identity")
    persons = rng.choice(plan.verification_persons, size=n, replace=False)
    leaked = []
    for person, slot in zip(persons, rng.choice(len(pool), size=n, replace=False)):
        d, local = pool[slot]
        plan.datasets[d].persons[local] = int(person)
        free[d].remove(local)
        leaked.append((int(person), d, local))
    return sorted(leaked, key=lambda x: (x[1], x[2]))


def _plant_wrong_images(plan: SynthPlan, rng) -> dict[tuple[int, int], list[int]]:
    """At most a third (less one) of a class's images are wrong, so its own person stays the majority."""
    wrong: dict[tuple[int, int], list[int]] = {}
    for d, ds in enumerate(plan.datasets):
        slots = [local for local, count in enumerate(ds.image_counts) for _ in range((count - 1) // 3)]
        n = min(int(round(plan.config.noise_mislabel * ds.num_images)), len(slots))
        for i in sorted(rng.choice(len(slots), size=n, replace=False).tolist()):
            local = slots[i]
            others = [o for o in range(ds.num_classes) if ds.persons[o] != ds.persons[local]]
            wrong.setdefault((d, local), []).append(int(rng.choice(others)))
    return wrong


def plant_noise(plan: SynthPlan) -> NoisePlan:
    """Plant the config's label noise into `plan` (in place): duplicate labels and leaked verification
    identities replace persons of classes in no overlap group; wrongly filed images are listed per class.
    With every noise option 0 the plan is unchanged and no random number is drawn from the plan's streams."""
    config = plan.config
    if not (config.noise_mislabel or config.noise_duplicates or config.noise_leaked_ids):
        return NoisePlan({}, [], [])
    rng = np.random.default_rng([config.seed, _NOISE_PLAN])
    free = _free_classes(plan)
    duplicates = _plant_duplicates(plan, free, rng)
    leaked = _plant_leaks(plan, free, rng)
    return NoisePlan(_plant_wrong_images(plan, rng), duplicates, leaked)


def noise_ground_truth(plan: SynthPlan, noise: NoisePlan, mislabeled: list[dict]) -> dict:
    """The body of noise.json; `mislabeled` is where `generate` put each wrongly filed image."""
    ds = plan.datasets
    leaked = []
    for person, d, local in noise.leaked:
        pairs = [j for j, (a, b, _) in enumerate(plan.pairs) if person in (a, b)]
        images = sorted(2 * j + k for j in pairs for k in (0, 1) if plan.pairs[j][k] == person)
        leaked.append({"dataset": ds[d].name, "local_label": local, "source_class": ds[d].class_offset + local,
                       "verification_images": images, "verification_pairs": pairs})
    return {
        "format": "fftrain-synth-noise", "version": 1,
        "settings": {"noise_mislabel": plan.config.noise_mislabel, "noise_duplicates": plan.config.noise_duplicates,
                     "noise_leaked_ids": plan.config.noise_leaked_ids},
        "mislabeled": mislabeled,
        "duplicates": [{"dataset": ds[d].name, "local_labels": [a, b],
                        "source_classes": [ds[d].class_offset + a, ds[d].class_offset + b]}
                       for d, a, b in noise.duplicates],
        "leaked": leaked,
    }


# ---------------------------------------------------------------------------------------------
# Rendering tasks (run in worker processes) and the writer.

_CENTRES: dict[int, np.ndarray] = {}


def _latent(seed: int, person: int) -> np.ndarray:
    if seed not in _CENTRES:
        _CENTRES[seed] = cluster_centres(seed)
    return person_latent(seed, person, _CENTRES[seed])


def _render_task(task: tuple) -> list[bytes]:
    kind = task[0]
    if kind == "class":
        _, seed, d, local, person, count, style, knobs = task
        rng = np.random.default_rng([seed, _IMAGES, d, local])
        return render_person(_latent(seed, person), count, STYLES[style], rng, *knobs)
    if kind == "noisy_class":
        _, seed, d, local, person, count, style, knobs, wrong_persons = task
        rng = np.random.default_rng([seed, _IMAGES, d, local])
        right = render_person(_latent(seed, person), count - len(wrong_persons), STYLES[style], rng, *knobs)
        rng = np.random.default_rng([seed, _NOISE_IMAGES, d, local])
        return right + [render_person(_latent(seed, p), 1, STYLES[style], rng, *knobs)[0] for p in wrong_persons]
    _, seed, j, a, b, same, knobs = task
    rng = np.random.default_rng([seed, _VERIFICATION, j])
    style = STYLES["verification"]
    if same:
        return render_person(_latent(seed, a), 2, style, rng, *knobs)
    return render_person(_latent(seed, a), 1, style, rng, *knobs) + render_person(_latent(seed, b), 1, style, rng,
                                                                                 *knobs)


def _imap(tasks: list[tuple], workers: int) -> Iterable[list[bytes]]:
    if workers <= 1:
        yield from map(_render_task, tasks)
        return
    import multiprocessing

    from .shards import exit_with_parent

    with multiprocessing.get_context("fork").Pool(workers, initializer=exit_with_parent,
                                                  initargs=(os.getpid(),)) as pool:
        yield from pool.imap(_render_task, tasks, chunksize=4)


SYNTH_FILE = "synth.json"
VERIFICATION_FILE = "verification.bin"


def generate(config: SynthConfig, out_dir: str, progress: bool = True) -> dict:
    """Write the synthetic set to `out_dir` (all or nothing) and return the summary also written to synth.json.

    Layout: <out_dir>/<dataset>/ (six dataset folders, shards + dataset.json), manifest.json and train.idx
    (the training set over all six, in the order of DATASET_NAMES), overlaps.json, verification.bin,
    synth.json, README.md.
    """
    from tqdm import tqdm

    from .manifest import write_manifest
    from .overlaps import OVERLAPS_FILE, make_groups, write_overlaps
    from .files import write_text_atomic
    from .shards import DatasetWriter, atomic_directory
    from .verification_bin import write_verification_bin

    plan = make_plan(config)
    noise = plant_noise(plan)
    knobs = (config.jpeg_quality, config.identity_spread, config.image_drift)
    tasks = [_class_task(config, plan, noise, d, local, knobs)
             for d, ds in enumerate(plan.datasets) for local in range(ds.num_classes)]
    tasks += [("pair", config.seed, j, a, b, same, knobs) for j, (a, b, same) in enumerate(plan.pairs)]
    total = plan.num_images + 2 * len(plan.pairs)
    with atomic_directory(out_dir, "synth") as tmp, \
            tqdm(total=total, unit="img", desc="synth", disable=not progress, leave=False) as bar:
        results = iter(_imap(tasks, config.workers))
        infos, folders, mislabeled = [], [], []
        for d, ds in enumerate(plan.datasets):
            images = []
            for local in range(ds.num_classes):
                jpegs = next(results)
                images += [(local, jpeg) for jpeg in jpegs]
                bar.update(len(jpegs))
            folder = os.path.join(tmp, ds.name)
            os.makedirs(folder)
            writer = DatasetWriter(folder, ds.name, config.shards, ds.class_offset)
            order = np.random.default_rng([config.seed, _ORDER, d]).permutation(len(images))
            for i in order:
                writer.add(*images[i])
            mislabeled += _where_wrong_images_went(plan, noise, d, order, config.shards)
            infos.append(writer.finish(ds.num_classes))
            folders.append(folder)
        pair_images: list[bytes] = []
        for _ in plan.pairs:
            jpegs = next(results)
            pair_images += jpegs
            bar.update(len(jpegs))
        write_verification_bin(os.path.join(tmp, VERIFICATION_FILE), pair_images, [s for _, _, s in plan.pairs])
        table = [(i.name, i.class_offset, i.num_classes) for i in infos]
        write_overlaps(os.path.join(tmp, OVERLAPS_FILE), table, make_groups(table, plan.groups),
                       source="recordio_tools synth", seed=config.seed)
        write_manifest(tmp, infos, folders)
        if noise.active:
            write_text_atomic(os.path.join(tmp, NOISE_FILE),
                              json.dumps(noise_ground_truth(plan, noise, mislabeled), indent=1) + "\n")
        summary = {
            "format": "fftrain-synth", "version": 1,
            # workers: the output does not depend on it; noise options: absent when off, as before they existed
            "config": {k: v for k, v in asdict(config).items()
                       if k != "workers" and not (k.startswith("noise_") and not v)},
            "num_classes": sum(i.num_classes for i in infos), "num_images": plan.num_images,
            "datasets": [{"name": i.name, "class_offset": i.class_offset, "num_classes": i.num_classes,
                          "num_images": i.num_images, "style": asdict(STYLES[i.name])} for i in infos],
            "overlap_groups": len(plan.groups),
            "verification": {"file": VERIFICATION_FILE, "pairs": len(plan.pairs),
                             "positive": sum(s for _, _, s in plan.pairs),
                             "identities": len(plan.verification_persons)},
            "manifest": "manifest.json", "overlaps": OVERLAPS_FILE,
        }
        if noise.active:
            summary["noise"] = {"file": NOISE_FILE, "mislabeled_images": len(mislabeled),
                                "duplicate_pairs": len(noise.duplicates), "leaked_ids": len(noise.leaked)}
        with open(os.path.join(tmp, SYNTH_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(_README.format(**summary, names=", ".join(i.name for i in infos)))
    return summary


def _class_task(config: SynthConfig, plan: SynthPlan, noise: NoisePlan, d: int, local: int, knobs) -> tuple:
    ds = plan.datasets[d]
    person, count = ds.persons[local], ds.image_counts[local]
    wrong = noise.wrong.get((d, local))
    if not wrong:
        return ("class", config.seed, d, local, person, count, ds.name, knobs)
    return ("noisy_class", config.seed, d, local, person, count, ds.name, knobs, [ds.persons[o] for o in wrong])


def _where_wrong_images_went(plan: SynthPlan, noise: NoisePlan, d: int, order: np.ndarray, shards: int) -> list[dict]:
    """(shard, key) of dataset d's wrongly filed images; the writer puts write position i in shard
    i % shards under key i // shards, and a noisy class's wrong images are its last ones."""
    from .manifest import shard_name

    ds = plan.datasets[d]
    if not any(dd == d for dd, _ in noise.wrong):
        return []
    true_local = []  # per image, in rendering order: the local label its person has, or None when filed right
    for local, count in enumerate(ds.image_counts):
        wrong = noise.wrong.get((d, local), [])
        true_local += [None] * (count - len(wrong)) + wrong
    filed = np.repeat(np.arange(ds.num_classes), ds.image_counts)
    out = []
    for position, i in enumerate(order.tolist()):
        if true_local[i] is not None:
            out.append({"dataset": ds.name, "shard": shard_name(position % shards) + ".rec", "key": position // shards,
                        "source_class": ds.class_offset + int(filed[i]),
                        "true_source_class": ds.class_offset + true_local[i]})
    return sorted(out, key=lambda r: (r["shard"], r["key"]))


_README = """# Synthetic six-dataset set (recordio_tools synth)

{num_classes} identities, {num_images} images in six datasets ({names}), seed {config[seed]}.
How it is made: docs/synthetic_data.md in the fftrain repository.

- `<dataset>/`: shards and dataset.json of one dataset (labels are source classes: class_offset + local).
- `manifest.json`, `train.idx`: the training set over all six datasets; give this folder to the trainer.
- `overlaps.json`: ground truth, {overlap_groups} persons present in two or more datasets.
- `verification.bin`: {verification[pairs]} pairs (insightface format) of {verification[identities]} identities
  that are in no training dataset.
- `synth.json`: the parameters and per-dataset counts.
"""


# ---------------------------------------------------------------------------------------------
# Entry points for the trainer's demo (fftrain/demo.py generates the set when it is missing).

PRESETS = {"default": SynthConfig, "tiny": tiny_config}


def synthetic_manifest_path(out_dir: str) -> str:
    """Where `generate` puts the training-set manifest: <out_dir>/manifest.json."""
    return os.path.join(out_dir, "manifest.json")


def generate_synthetic_set(out_dir: str, preset: str = "default", seed: int = 0, progress: bool = True,
                           **overrides) -> dict:
    """`generate` with a named preset ('default' or 'tiny'); `overrides` are SynthConfig fields."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; available: {sorted(PRESETS)}")
    return generate(PRESETS[preset](seed=seed, **overrides), out_dir, progress=progress)


# ---------------------------------------------------------------------------------------------
# An unlabeled collection in the same face world (`recordio_tools synth --unlabeled N`), for
# `fftrain pseudo-label`: some of its persons are in the labeled datasets, the rest are new.

UNLABELED_DIR = "unlabeled"
UNLABELED_TRUTH_FILE = "truth.json"
_UNLABELED_STREAM = 1000  # dataset index of the unlabeled images' random streams (the six use 0..5)


@dataclass
class UnlabeledPlan:
    persons: list[int]
    image_counts: list[int]
    source_class: list[int]  # the labeled source class of each person (its first), -1 for new persons


def make_unlabeled_plan(config: SynthConfig, num_ids: int, overlap: float, images_per_id: float) -> UnlabeledPlan:
    """`num_ids` persons, round(overlap * num_ids) of them drawn from the labeled datasets' persons,
    the others new (numbered after the held-out verification persons)."""
    if num_ids < 1 or not 0.0 <= overlap <= 1.0 or images_per_id < 2:
        raise ValueError(f"unlabeled: need ids >= 1 (got {num_ids}), overlap in [0, 1] (got {overlap}) and "
                         f"images per id >= 2 (got {images_per_id})")
    plan = make_plan(config)
    labeled: dict[int, int] = {}
    for ds in plan.datasets:
        for local, person in enumerate(ds.persons):
            labeled.setdefault(person, ds.class_offset + local)
    n_overlap = int(round(overlap * num_ids))
    if n_overlap > len(labeled):
        raise ValueError(f"unlabeled: overlap {overlap} of {num_ids} identities needs {n_overlap} labeled persons, "
                         f"the labeled datasets hold {len(labeled)}")
    rng = np.random.default_rng([config.seed, _PLAN, _UNLABELED_STREAM])
    shared = sorted(rng.choice(sorted(labeled), n_overlap, replace=False).tolist())
    first_new = max(plan.verification_persons) + 1
    persons = shared + list(range(first_new, first_new + num_ids - n_overlap))
    return UnlabeledPlan(persons, _image_counts(images_per_id, num_ids, rng),
                         [labeled.get(p, -1) for p in persons])


def generate_unlabeled(config: SynthConfig, out_dir: str, *, num_ids: int, overlap: float = 0.25,
                       images_per_id: float = 10.0, progress: bool = True) -> dict:
    """Write an unlabeled dataset folder (one shard, every label 0) and its ground truth (truth.json:
    person, overlap flag and labeled source class of every record, in record order); all or nothing."""
    from tqdm import tqdm

    from .shards import DatasetWriter, atomic_directory

    uplan = make_unlabeled_plan(config, num_ids, overlap, images_per_id)
    knobs = (config.jpeg_quality, config.identity_spread, config.image_drift)
    tasks = [("class", config.seed, _UNLABELED_STREAM, j, person, count, "verification", knobs)
             for j, (person, count) in enumerate(zip(uplan.persons, uplan.image_counts))]
    images: list[tuple[int, bytes]] = []
    with tqdm(total=sum(uplan.image_counts), unit="img", desc="synth unlabeled", disable=not progress,
              leave=False) as bar:
        for j, jpegs in enumerate(_imap(tasks, config.workers)):
            images += [(j, jpeg) for jpeg in jpegs]
            bar.update(len(jpegs))
    order = np.random.default_rng([config.seed, _ORDER, _UNLABELED_STREAM]).permutation(len(images))
    with atomic_directory(out_dir) as tmp:
        writer = DatasetWriter(tmp, UNLABELED_DIR, 1)
        for i in order:
            writer.add(0, images[i][1])
        writer.finish(1)
        who = [images[i][0] for i in order]
        truth = {"format": "fftrain-unlabeled-truth", "version": 1, "seed": config.seed, "overlap_fraction": overlap,
                 "identity": [uplan.persons[j] for j in who],
                 "overlap": [uplan.source_class[j] >= 0 for j in who],
                 "source_class": [uplan.source_class[j] for j in who]}
        with open(os.path.join(tmp, UNLABELED_TRUTH_FILE), "w", encoding="utf-8") as f:
            json.dump(truth, f)
            f.write("\n")
    return {"identities": num_ids, "overlapping_identities": sum(c >= 0 for c in uplan.source_class),
            "images": len(images), "overlapping_images": int(sum(truth["overlap"]))}
