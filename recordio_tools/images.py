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


class LandmarksError(ImageError):
    """An image whose landmarks do not fit it."""


def looks_like_image(data: bytes) -> bool:
    """True when `data` starts with a known image signature (JPEG, PNG, BMP, GIF, TIFF, PNM, WebP)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return any(data.startswith(signature) for signature in _SIGNATURES)


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (DHT, JPG, DAC are not)
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}       # markers without a length field


def jpeg_structure_problem(data) -> str | None:
    """None when a JPEG's marker segments run from SOI through a frame header to SOS inside the data
    and an EOI follows the scan data; else what is wrong. Checks the structure only (no decode):
    microseconds per image, so the trainer can run it on every record before DALI's parser, which
    can crash the process on such bytes. Hand-written: PIL's parser costs a decoder object per
    image and does not look for the EOI. Data that is not a JPEG is not judged (None)."""
    data = bytes(data)
    if data[:2] != b"\xff\xd8":
        return None
    pos, size, frame = 2, len(data), False
    while True:
        if pos + 4 > size:
            return f"JPEG header cut short at byte {pos} of {size}"
        if data[pos] != 0xFF:
            return f"JPEG header broken: byte {pos} is 0x{data[pos]:02x} where a marker must start"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0x00, 0xD8, 0xD9):
            return f"JPEG header broken: invalid marker 0xff{marker:02x} at byte {pos}"
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > size:
            return f"JPEG header broken: segment 0xff{marker:02x} at byte {pos} has length {length} ({size} bytes in all)"
        frame = frame or marker in _SOF
        pos += 2 + length
        if marker == 0xDA:
            break
    if not frame:
        return "JPEG without a frame header (SOF) before its scan"
    if data.find(b"\xff\xd9", pos) == -1:
        return f"JPEG image data without an end marker (EOI) after byte {pos}: truncated or overwritten"
    return None


def decode(data: bytes, at_least: tuple[int, int] | None = None, strict_jpeg: bool = False) -> Image.Image:
    """The fully decoded image; raises ImageError for empty, truncated or unknown bytes.

    With `at_least` a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps it at
    least that large, much faster than decoding it whole when it is about to be shrunk anyway.
    With `strict_jpeg` a JPEG that decodes only with libjpeg warnings ("Corrupt JPEG data: ..."),
    which PIL ignores and which leave a garbage image, is an ImageError too.
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
    if strict_jpeg and image.format == "JPEG":
        warning = jpeg_warning(data, at_least)
        if warning:
            raise ImageError(f"JPEG decoder warning: {warning}")
    return image


def jpeg_warning(data: bytes, at_least: tuple[int, int] | None = None) -> str | None:
    """libjpeg's warning for JPEG bytes that decode only with damage (PIL does not report these), else None.

    libjpeg-turbo through simplejpeg, whose strict mode raises on recoverable errors; a scaled decode
    (`at_least`) still reads every entropy-coded byte, so it sees the same warnings."""
    import simplejpeg

    size = {"min_width": at_least[0], "min_height": at_least[1]} if at_least else {}
    try:
        simplejpeg.decode_jpeg(data, strict=True, **size)
    except ValueError as e:
        try:
            simplejpeg.decode_jpeg(data, strict=False, **size)
        except ValueError:
            return None  # a JPEG flavour simplejpeg does not read (PIL did): no warning to report
        return str(e)
    return None


def decode_problem(data: bytes) -> str | None:
    """None when `data` decodes as an image, else a short reason."""
    try:
        decode(data, strict_jpeg=True)
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
    image = decode(data, at_least=None if landmarks is not None else (size, size), strict_jpeg=True)
    if landmarks is not None:
        from .align import align_face, points_outside

        outside = points_outside(landmarks, *image.size)
        if outside:
            raise LandmarksError(f"landmark(s) {outside} outside the {image.size[0]}x{image.size[1]} image")

        return encode_jpeg(align_face(image.convert("RGB"), landmarks, size), quality)
    if image.size == (size, size) and image.mode == "RGB" and image.format == "JPEG":
        return data
    return encode_jpeg(square_resize(image.convert("RGB"), size), quality)
