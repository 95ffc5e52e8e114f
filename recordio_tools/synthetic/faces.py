"""The face renderer: a batch of latents (one person each, already drifted) -> uint8 images.

`render_faces` runs the steps in a fixed order, each a short function below: draw the per-image
nuisance, read the identity parameters from the latents, paint the background, then hair, neck and
ears, the head (skin texture, cheeks, beard, moles, fringe), eyes, nose, mouth, an occluder, and
finally the lighting, the dataset's colour style and its camera. The random draws happen in that
order, so the bytes of an image depend only on the seed stream it is given. Small features are
drawn inside a pixel box that holds them in every image of the batch, so most of the work is on a
fraction of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .drawing import _blend, _blur, _downsample, _Frame, _lerp, _noise, _rgb, _shape, _upsample, encode_jpegs
from .world import _FIXED, _P, IDENTITY_SPREAD, IMAGE_DRIFT, LATENT_DIM, SIZE, Style


def render_faces(latents: np.ndarray, style: Style, rng: np.random.Generator,
                 identity_spread: float = IDENTITY_SPREAD) -> np.ndarray:
    """Render one image per row of `latents` [B, LATENT_DIM] (already drifted) -> uint8 [B,112,112,3].

    The latent fixes the person (geometry, colours, hair, accessories, skin texture); `rng` draws the
    per-image nuisance (pose, expression, lighting, occluder, background) scaled by `style`, and the
    style's camera (colour cast, resolution loss, blur, noise) is applied; only JPEG encoding is left.
    `identity_spread` scales how far persons lie from the average face (smaller: harder to tell apart).
    """
    z = np.asarray(latents, dtype=np.float32)
    nuisance = _Nuisance.draw(rng, style, z.shape[0])
    frame = _Frame(nuisance.roll, nuisance.scale, nuisance.shift_x, nuisance.shift_y)
    face = _Face(z, nuisance, identity_spread)
    canvas = _background(rng, style, frame, face.B)
    _draw_hair_neck_ears(canvas, frame, face)
    head = _draw_head(canvas, frame, face)
    _draw_cheeks(canvas, frame, face, head)
    _draw_beard_moles_fringe(canvas, frame, face, head)
    _draw_eyes(canvas, frame, face)
    _draw_nose(canvas, frame, face)
    _draw_mouth(canvas, frame, face)
    _draw_occluder(canvas, frame, face, rng, style)
    canvas = _light_and_colour(canvas, frame, face.B, rng, style)
    return _camera(canvas, face.B, rng, style)


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
# What is drawn: per-image nuisance and the person's parameters


def _col(a, B: int) -> np.ndarray:
    """[B,1,1] float32 from B values."""
    return np.asarray(a, dtype=np.float32).reshape(B, 1, 1)


@dataclass
class _Nuisance:
    """Per-image pose and expression ([B,1,1] each), drawn from `rng` in this order."""

    roll: np.ndarray  # radians (~6 degrees)
    scale: np.ndarray
    shift_x: np.ndarray
    shift_y: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    mouth_open: np.ndarray
    smile: np.ndarray
    eye_open: np.ndarray
    brow_raise: np.ndarray
    gaze: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, style: Style, B: int) -> "_Nuisance":
        return cls(roll=_col(rng.normal(0, 0.11, B) * style.pose, B),
                   scale=_col(np.exp(rng.normal(0, 0.07, B)), B),
                   shift_x=_col(rng.normal(0, 0.045, B) * style.pose, B),
                   shift_y=_col(rng.normal(0, 0.045, B) * style.pose, B),
                   yaw=_col(np.clip(rng.normal(0, 0.3, B) * style.pose, -0.75, 0.75), B),
                   pitch=_col(np.clip(rng.normal(0, 0.15, B) * style.pose, -0.4, 0.4), B),
                   mouth_open=_col(np.abs(rng.normal(0, 0.35, B)), B),
                   smile=_col(rng.normal(0, 0.5, B), B),
                   eye_open=_col(np.clip(1 - np.abs(rng.normal(0, 0.25, B)), 0.15, 1.0), B),
                   brow_raise=_col(rng.normal(0, 0.035, B), B),
                   gaze=_col(rng.normal(0, 0.03, B), B))


class _Face:
    """The person's parameters ([B,1,1] each: population mean + spread * latent entry), combined with the
    image's pose and expression, and the colours they give."""

    def __init__(self, z: np.ndarray, n: _Nuisance, identity_spread: float):
        self.z, self.B, self.spread = z, z.shape[0], identity_spread
        self.yaw, self.gaze, self.mouth_open = n.yaw, n.gaze, n.mouth_open
        self._geometry(n)
        self._hair_and_marks()
        # yaw: features move toward the turned side by their depth; the far side narrows
        self.far = 1 - 0.35 * np.abs(n.yaw)
        self.feat = n.yaw * 0.32  # shift of the inner features, face units
        self.head_x = -n.yaw * 0.06
        self._colours()

    def par(self, name: str, mean: float, spread: float) -> np.ndarray:
        """[B,1,1] identity parameter: population mean + spread * the person's latent entry."""
        return (mean + self.spread * spread * self.z[:, _P[name]])[:, None, None]

    def latent(self, name: str) -> np.ndarray:
        """[B,1,1] raw latent entry."""
        return self.z[:, _P[name]][:, None, None]

    def _geometry(self, n: _Nuisance) -> None:
        par = self.par
        self.head_w = par("head_w", 1.05, 0.06)
        self.head_h = par("head_h", 1.42, 0.07)
        self.head_y = par("head_y", 0.28, 0.04) + n.pitch * 0.05
        self.jaw = np.clip(par("jaw", 0.22, 0.08), 0.0, 0.5)
        self.square = np.clip(par("square", 0.12, 0.1), 0.0, 0.4)
        self.eye_x = par("eye_x", 0.58, 0.045)
        self.eye_y = par("eye_y", -0.12, 0.05) - n.pitch * 0.12
        self.eye_w = par("eye_w", 0.2, 0.022)
        self.eye_h = par("eye_h", 0.095, 0.014) * n.eye_open
        self.eye_tilt = par("eye_tilt", 0.0, 0.09)
        self.brow_d = par("brow_d", 0.26, 0.04) + n.brow_raise
        self.brow_w = par("brow_w", 0.27, 0.03)
        self.brow_t = np.clip(par("brow_t", 0.05, 0.014), 0.02, 0.1)
        self.brow_tilt = par("brow_tilt", 0.08, 0.1)
        self.brow_curve = par("brow_curve", 0.7, 0.4)
        self.nose_y = par("nose_y", 0.5, 0.055) - n.pitch * 0.2
        self.nose_w = par("nose_w", 0.17, 0.028)
        self.mouth_y = par("mouth_y", 0.92, 0.06) - n.pitch * 0.25
        self.mouth_w = par("mouth_w", 0.36, 0.045)
        self.lip_t = np.clip(par("lip_t", 0.065, 0.014), 0.03, 0.12)
        self.smile = par("smile", 0.0, 0.25) + n.smile * 0.6

    def _hair_and_marks(self) -> None:
        par = self.par
        self.tone = np.clip(par("skin_tone", 0.45, 0.22), 0.0, 1.0)
        self.hue = par("skin_hue", 0.0, 0.05)
        self.hair_light = np.clip(par("hair_light", 0.25, 0.25), 0.0, 1.0)
        self.hair_red = np.clip(par("hair_red", 0.0, 0.3), -0.2, 0.6)
        self.hairline = par("hairline", -0.72, 0.12)
        self.hair_vol = np.clip(par("hair_vol", 1.0, 0.12), 0.6, 1.4)
        self.hair_long = np.clip(par("hair_long", 0.2, 0.6), 0.0, 1.2)
        self.hair_wave = par("hair_wave", 0.0, 0.08)
        self.hair_part = par("hair_part", 0.0, 0.2)
        self.iris = self.latent("iris")
        self.beard = np.clip(par("beard", -0.4, 0.6), 0.0, 0.8)
        self.glasses = (self.z[:, _P["glasses"]] > 1.25).astype(np.float32)[:, None, None]
        self.cheek = np.clip(par("cheek", 0.15, 0.15), 0.0, 0.5)
        self.ear = par("ear", 1.0, 0.15)
        self.lip_red = np.clip(par("lip_red", 0.4, 0.25), 0.0, 1.0)

    def _colours(self) -> None:
        tone, hue, light, red, iris, lip_red = (self.tone, self.hue, self.hair_light, self.hair_red, self.iris,
                                                self.lip_red)
        self.skin = _rgb(_lerp(238, 112, tone) + hue * 120, _lerp(200, 72, tone), _lerp(178, 48, tone) - hue * 80)
        self.hair_rgb = _rgb(_lerp(25, 215, light) + red * 120, _lerp(20, 185, light) + red * 25,
                             _lerp(18, 130, light) - red * 30)
        self.iris_rgb = _rgb(np.where(iris > 0.6, 70, np.where(iris < -0.8, 90, 70)),
                             np.where(iris > 0.6, 110, np.where(iris < -0.8, 110, 45)),
                             np.where(iris > 0.6, 160, np.where(iris < -0.8, 70, 30)))
        self.lip_rgb = self.skin * _rgb(_lerp(0.85, 0.95, lip_red), _lerp(0.7, 0.45, lip_red),
                                        _lerp(0.7, 0.5, lip_red))
        self.dark = _rgb(30, 30, 35)


# ---------------------------------------------------------------------------------------------
# Painting, back to front


def _background(rng: np.random.Generator, style: Style, frame: _Frame, B: int) -> np.ndarray:
    """A new canvas [3,B,H,W]: a colour, a smooth random field and a gradient."""
    bg = np.asarray(style.background, np.float32)[:, None] + rng.normal(0, 30, (3, B)).astype(np.float32)
    field = (rng.normal(0, 14, (3, B, 5, 5)) + rng.normal(0, 22, (1, B, 5, 5))).astype(np.float32)
    canvas = _upsample(_upsample(field, axis=2), axis=3)
    canvas += bg[:, :, None, None]
    bg_dir = rng.uniform(0, 2 * np.pi, B).astype(np.float32)
    canvas += ((np.cos(bg_dir)[:, None, None] * frame.X + np.sin(bg_dir)[:, None, None] * frame.Y)
               * _col(rng.uniform(0, 40, B), B))[None]
    return canvas


def _draw_hair_neck_ears(canvas: np.ndarray, frame: _Frame, f: _Face) -> None:
    """Hair behind the head, the neck, both ears."""
    u, v = frame.u, frame.v
    hx = f.head_x + f.hair_part * 0.1
    back_h = f.head_h * f.hair_vol * (1.0 + 0.55 * f.hair_long)
    back_y = f.head_y - f.head_h * 0.12 + (back_h - f.head_h * f.hair_vol) * 0.7
    _blend(canvas, _shape(u, v, hx, back_y, f.head_w * 1.12 * f.hair_vol, back_h, square=0.15), f.hair_rgb)
    neck = _shape(u, v, f.head_x * 0.5, f.head_y + f.head_h * 1.05, f.head_w * 0.55, f.head_h * 0.6, square=0.5)
    _blend(canvas, neck, f.skin * 0.85)
    ear_y = f.eye_y + 0.3
    for side in (-1.0, 1.0):
        ear_x = f.head_x + side * f.head_w * (0.97 - 0.12 * side * f.yaw)
        rows, cols = frame.box(ear_x, ear_y, 0.35 * f.ear)
        _blend(canvas[:, :, rows, cols], _shape(u[:, rows, cols], v[:, rows, cols], ear_x, ear_y, 0.15 * f.ear,
                                                0.28 * f.ear), f.skin * 0.92)


@dataclass
class _Head:
    """The head mask on its pixel box and that box's coordinates and canvas view."""

    mask: np.ndarray
    rows: slice
    cols: slice
    hv: np.ndarray  # v coordinates on the box
    du: np.ndarray  # u relative to the head centre
    canvas: np.ndarray  # view of the canvas on the box

    def full(self, r: slice, c: slice, B: int) -> np.ndarray:
        """The head mask on the rows/columns r, c of the frame (zero outside the head box)."""
        full = np.zeros((B, SIZE, SIZE), np.float32)
        full[:, self.rows, self.cols] = self.mask
        return full[:, r, c]


def _draw_head(canvas: np.ndarray, frame: _Frame, f: _Face) -> _Head:
    """The head, tapered at the jaw, with the person's skin texture."""
    rows, cols = frame.box(f.head_x, f.head_y, f.head_h * 1.05)
    hu, hv, hc = frame.u[:, rows, cols], frame.v[:, rows, cols], canvas[:, :, rows, cols]
    du, dv = hu - f.head_x, hv - f.head_y
    taper = 1.0 - f.jaw * np.clip(dv / f.head_h, 0.0, 1.0) ** 2
    head = _shape(du / taper, dv, 0.0, 0.0, f.head_w, f.head_h, square=f.square)
    ta, tb, tc = (f.latent(n) for n in ("tex_a", "tex_b", "tex_c"))
    tex = (ta * np.cos(2.1 * hu + 1.3 * hv + tb) + tb * np.cos(1.4 * hu - 2.6 * hv + tc)
           + tc * np.cos(3.3 * hv + 0.7 * hu + ta))
    _blend(hc, head, f.skin * (1.0 + 0.035 * tex)[None])
    return _Head(head, rows, cols, hv, du, hc)


def _draw_cheeks(canvas: np.ndarray, frame: _Frame, f: _Face, head: _Head) -> None:
    u, v = frame.u, frame.v
    for side in (-1.0, 1.0):
        cx, cy = f.head_x + f.feat + side * 0.62 * f.far ** side, f.nose_y + 0.1
        r, c = frame.box(cx, cy, 0.32)
        _blend(canvas[:, :, r, c], head.full(r, c, f.B) * _shape(u[:, r, c], v[:, r, c], cx, cy, 0.3, 0.22) * f.cheek,
               f.skin * _rgb(1.05, 0.85, 0.85))


def _draw_beard_moles_fringe(canvas: np.ndarray, frame: _Frame, f: _Face, head: _Head) -> None:
    if f.beard.max() > 0:
        _blend(head.canvas, head.mask * np.clip((head.hv - (f.nose_y + 0.18)) / 0.15, 0.0, 1.0) * f.beard,
               f.hair_rgb * 0.9 + f.skin * 0.1)
    z, B = f.z, f.B
    n_moles = np.clip(z[:, _P["moles"]], 0, 3).astype(np.int32)
    zm, za, zb = (z[:, _P[n]] for n in ("moles", "tex_a", "tex_b"))
    for k in range(int(n_moles.max())):
        present = (n_moles > k).astype(np.float32)[:, None, None]
        cx = f.head_x + f.feat + _col(0.65 * np.sin(2.1 * k + 7.3 * zm + 3.1 * za), B)
        cy = f.head_y + _col(0.6 * np.sin(1.7 * k + 5.9 * zb + 2.3 * zm), B)
        r, c = frame.box(cx, cy, 0.05)
        mole = _shape(frame.u[:, r, c], frame.v[:, r, c], cx, cy, 0.035, 0.035) * present * head.full(r, c, B)
        _blend(canvas[:, :, r, c], mole, f.skin * 0.55)
    du = head.du
    line = (f.head_y - f.head_h + (f.hairline + 1.0) * 0.55 * f.head_h + f.hair_wave * np.cos(6.0 * du)
            + f.hair_part * 0.25 * du)
    fringe = head.mask * np.clip((line - head.hv) / 0.06, 0.0, 1.0) * np.clip((f.hair_vol - 0.5) * 2, 0.0, 1.0)
    _blend(head.canvas, fringe, f.hair_rgb)


def _draw_eyes(canvas: np.ndarray, frame: _Frame, f: _Face) -> None:
    """Both eyes with their brows and glasses' rims, then the glasses' bridge."""
    for side in (-1.0, 1.0):
        _draw_eye(canvas, frame, f, side)
    if f.glasses.max() > 0:
        rows, cols = frame.box(f.head_x + f.feat, f.eye_y, 0.2)
        _blend(canvas[:, :, rows, cols], _shape(frame.u[:, rows, cols], frame.v[:, rows, cols], f.head_x + f.feat,
                                                f.eye_y - 0.04, 0.12, 0.02) * f.glasses, f.dark)


def _draw_eye(canvas: np.ndarray, frame: _Frame, f: _Face, side: float) -> None:
    yaw, eye_y, eye_w = f.yaw, f.eye_y, f.eye_w
    narrow = f.far ** (side * np.sign(yaw + 1e-6))
    ex = f.head_x + f.feat + side * f.eye_x * (1 - 0.25 * np.abs(yaw)) + 0.05 * yaw * side
    rows, cols = frame.box(ex, eye_y - 0.12, 0.5)
    eu, ev, ec = frame.u[:, rows, cols], frame.v[:, rows, cols], canvas[:, :, rows, cols]
    tilt = -side * f.eye_tilt
    sclera = _shape(eu, ev, ex, eye_y, eye_w * narrow, f.eye_h, tilt)
    _blend(ec, sclera, _rgb(235, 230, 225))
    ix = ex + f.gaze + yaw * 0.03
    _blend(ec, _shape(eu, ev, ix, eye_y, 0.075, 0.075) * sclera, f.iris_rgb)
    _blend(ec, _shape(eu, ev, ix, eye_y, 0.035, 0.035) * sclera, _rgb(10, 10, 10))
    _blend(ec, _shape(eu, ev, ex, eye_y - f.eye_h * 0.75, eye_w * narrow * 1.05, 0.028, tilt) * 0.8, f.skin * 0.45)
    bx = ex + side * 0.03
    du_b = eu - bx
    by = eye_y - f.brow_d + f.brow_curve * 0.5 * du_b ** 2 - side * f.brow_tilt * du_b
    _blend(ec, _shape(eu, ev, bx, by, f.brow_w * narrow, f.brow_t) * 0.9, f.hair_rgb * 0.8)
    if f.glasses.max() > 0:
        ring = (_shape(eu, ev, ex, eye_y, eye_w * narrow * 1.5, 0.2)
                - _shape(eu, ev, ex, eye_y, eye_w * narrow * 1.5 - 0.04, 0.16))
        _blend(ec, np.clip(ring, 0, 1) * f.glasses, f.dark)


def _draw_nose(canvas: np.ndarray, frame: _Frame, f: _Face) -> None:
    eye_y, nose_y, nose_w, skin = f.eye_y, f.nose_y, f.nose_w, f.skin
    nx = f.head_x + f.feat * 1.25
    rows, cols = frame.box(nx, (eye_y + nose_y) / 2, 0.55)
    nu, nv, nc = frame.u[:, rows, cols], frame.v[:, rows, cols], canvas[:, :, rows, cols]
    bridge = _shape(nu, nv, nx + 0.04 * np.sign(f.yaw), (eye_y + nose_y) / 2, nose_w * 0.45, (nose_y - eye_y) / 2)
    _blend(nc, bridge * 0.35, skin * 0.7)
    _blend(nc, _shape(nu, nv, nx, nose_y, nose_w, 0.09) * 0.5, skin * 0.78)
    for side in (-1.0, 1.0):
        _blend(nc, _shape(nu, nv, nx + side * nose_w * 0.55, nose_y + 0.05, 0.045, 0.028) * 0.9, skin * 0.35)


def _draw_mouth(canvas: np.ndarray, frame: _Frame, f: _Face) -> None:
    mouth_y, mouth_w, lip_t, far = f.mouth_y, f.mouth_w, f.lip_t, f.far
    mx = f.head_x + f.feat * 1.1
    rows, cols = frame.box(mx, mouth_y, 0.6)
    mu, mv, mc = frame.u[:, rows, cols], frame.v[:, rows, cols], canvas[:, :, rows, cols]
    dm = mu - mx
    mv = mv + f.smile * 0.45 * dm ** 2 / (mouth_w + 1e-3)
    opening = lip_t * 0.2 + f.mouth_open * 0.09
    _blend(mc, _shape(mu, mv, mx, mouth_y - opening / 2 - lip_t * 0.5, mouth_w * far, lip_t * 0.8), f.lip_rgb)
    _blend(mc, _shape(mu, mv, mx, mouth_y + opening / 2 + lip_t * 0.6, mouth_w * far * 0.85, lip_t), f.lip_rgb * 1.05)
    _blend(mc, _shape(mu, mv, mx, mouth_y, mouth_w * far * 0.9, opening), _rgb(60, 25, 25))


def _draw_occluder(canvas: np.ndarray, frame: _Frame, f: _Face, rng: np.random.Generator, style: Style) -> None:
    """A random patch, sunglasses or a face mask, on a fraction of the images."""
    B = f.B
    occluded = np.flatnonzero(rng.random(B) < style.occlusion)
    kind = rng.integers(0, 3, B)
    occ_rgb = rng.uniform(20, 235, (3, B)).astype(np.float32)
    ox, oy = rng.uniform(-1.1, 1.1, B).astype(np.float32), rng.uniform(-0.8, 1.4, B).astype(np.float32)
    ow, oh = rng.uniform(0.3, 0.8, B).astype(np.float32), rng.uniform(0.3, 0.8, B).astype(np.float32)
    head_x, feat, head_w = f.head_x, f.feat, f.head_w
    for i in occluded:
        ui, vi = frame.u[i], frame.v[i]
        if kind[i] == 0:
            m = _shape(ui, vi, ox[i], oy[i], ow[i], oh[i], square=0.8)
            colour = occ_rgb[:, i, None, None]
        elif kind[i] == 1:
            m = _shape(ui, vi, head_x[i] + feat[i], f.eye_y[i], head_w[i] * 1.05, 0.17, square=0.6)
            colour = np.full((3, 1, 1), 25, np.float32)
        else:
            m = _shape(ui, vi, head_x[i] + feat[i] * 0.5, f.mouth_y[i] - 0.05, head_w[i] * 0.9, 0.55, square=0.4)
            colour = occ_rgb[:, i, None, None]
        canvas[:, i] += m[None] * (colour - canvas[:, i])


# ---------------------------------------------------------------------------------------------
# Lighting, the dataset's colour style, the camera


def _light_and_colour(canvas: np.ndarray, frame: _Frame, B: int, rng: np.random.Generator,
                      style: Style) -> np.ndarray:
    """Directional light, brightness and colour temperature, then the style's saturation, contrast, gamma."""
    light_dir = rng.uniform(0, 2 * np.pi, B).astype(np.float32)
    strength = _col(rng.uniform(0, 0.55, B) * style.light, B)
    brightness = _col(np.exp(rng.normal(0, 0.14 * style.light, B)), B)
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
    return canvas


def _camera(canvas: np.ndarray, B: int, rng: np.random.Generator, style: Style) -> np.ndarray:
    """Resolution loss, blur and sensor noise; the uint8 images [B,H,W,3]."""
    if style.downsample > 1:
        canvas = _downsample(canvas, style.downsample)
    images = np.ascontiguousarray(canvas.transpose(1, 0, 2, 3))  # [B,3,H,W]
    _blur(images, style.blur + rng.uniform(0, 0.5, B))
    sigma = (style.noise + rng.uniform(0, 3, B)).astype(np.float32)
    images += _noise(rng, B) * sigma[:, None, None, None]
    images += 0.5
    return np.clip(images, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
