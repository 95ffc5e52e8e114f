"""Image bytes in and out: decode checks, JPEG encoding, and the 112x112 face crop the trainer reads.

    >>> jpeg = prepare_face("faces/id_0001/0.jpg", quality=95)                 # resized to 112x112
    >>> jpeg = prepare_face("raw/0.jpg", landmarks=points, quality=95)        # aligned with 5 points
    >>> decode_problem(b"not an image")                                      # 'not an image (...)'
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from .errors import UserError

FACE_SIZE = 112
"""Side of the square face crop, pixels (the ArcFace template is defined for 112x112)."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif"})

# First bytes of the formats PIL reads that face datasets use; a cheap check that needs no decode.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
               b"P5", b"P6")


class ImageError(UserError, ValueError):
    """Bytes or a file that do not decode as an image; the message says why (no path: callers add it)."""


def looks_like_image(data: bytes) -> bool:
    """True when `data` starts with a known image signature (JPEG, PNG, BMP, GIF, TIFF, PNM, WebP)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return any(data.startswith(signature) for signature in _SIGNATURES)


def decode(data: bytes, at_least: tuple[int, int] | None = None) -> Image.Image:
    """The fully decoded image; raises ImageError for empty, truncated or unknown bytes.

    With `at_least` a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps it at
    least that large, much faster than decoding it whole when it is about to be shrunk anyway.
    """
    if not data:
        raise ImageError("empty payload, not an image")
    try:
        image = Image.open(io.BytesIO(data))
        if at_least is not None and image.format == "JPEG":
            image.draft("RGB", at_least)
        image.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for bad bytes
        reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))
        raise ImageError(f"not a decodable image ({type(e).__name__}: {reason})") from None
    return image


def decode_problem(data: bytes) -> str | None:
    """None when `data` decodes as an image, else a short reason."""
    try:
        decode(data)
    except ImageError as e:
        return str(e)
    return None


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Baseline JPEG bytes of an RGB image at `quality` (1-100)."""
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def square_resize(image: Image.Image, size: int = FACE_SIZE) -> Image.Image:
    """Centre-crop to a square, then resize to `size` x `size` (bicubic)."""
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.BICUBIC)
    return image


def prepare_face(path: str, landmarks: np.ndarray | None = None, quality: int = 95,
                 size: int = FACE_SIZE) -> bytes:
    """JPEG bytes of the face in image file `path`, `size` x `size` RGB.

    With `landmarks` (5 x 2, pixels) the face is aligned to the ArcFace template; without them an
    image of the right size is kept (a JPEG byte for byte), any other is centre-cropped and resized
    (a large JPEG decoded at a reduced DCT scale first, see `decode`).
    Raises ImageError when the file does not decode.
    """
    with open(path, "rb") as f:
        data = f.read()
    image = decode(data, at_least=None if landmarks is not None else (size, size))
    if landmarks is not None:
        from .align import align_face

        return encode_jpeg(align_face(image.convert("RGB"), landmarks, size), quality)
    if image.size == (size, size) and image.mode == "RGB" and image.format == "JPEG":
        return data
    return encode_jpeg(square_resize(image.convert("RGB"), size), quality)
