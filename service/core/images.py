"""Decoding uploaded images safely: size checks before and after decoding, EXIF orientation, RGB.

OpenCV cannot read an image header without decoding, so `header_size` reads the width and height of
PNG, JPEG, GIF, BMP and WebP files from their first bytes: a small file that declares a huge canvas
(a decompression bomb) is refused before any pixel is allocated. Other formats (TIFF) are checked
after decoding.

EXIF orientation: `cv2.imdecode(..., cv2.IMREAD_COLOR)` applies a JPEG's EXIF Orientation tag
(rotation/mirroring) unless `IMREAD_IGNORE_ORIENTATION` is given, so the decoded image and the
returned width/height are as a viewer shows them (`tests/service/core/test_images.py` proves it with a
hand-built EXIF segment).

Reduced decoding (`fit`, off unless YOLOR_JPEG_REDUCED_DECODE is set): a JPEG several times larger than
the model input is decoded at 1/2, 1/4 or 1/8 scale by libjpeg-turbo's DCT scaling (OpenCV's
`IMREAD_REDUCED_COLOR_*`), never below the size its letterbox needs: less decoding for a large
photo, slightly different pixels than a full decode + resize (the CPU saved and the mAP: measured in
docs/benchmarks.md, "Reduced JPEG decoding").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from service.core.errors import InvalidImage, TooManyPixels

SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF"
# The file names taken for images of those formats where a folder is read (`yolor predict`,
# `yolor bench serve IMAGES`).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI
_REDUCED_JPEG = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
# OpenCV >= 4.10 decodes straight to RGB (libjpeg-turbo writes RGB as cheaply as BGR), which saves a
# full-image conversion pass; older versions decode BGR. Measured: docs/benchmarks.md,
# "Another machine, the ready batch, decoding to RGB".
_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, GIF, BMP or WebP file; None if not readable."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


@dataclass(frozen=True)
class Decoded:
    """An uploaded image decoded to (h, w, 3) uint8 RGB, possibly at a reduced scale; `height` and
    `width` are the full image's, as a viewer shows it (EXIF orientation applied)."""

    image: npt.NDArray[np.uint8]
    height: int
    width: int


def jpeg_reduction(width: int, height: int, fit: int) -> int:
    """The largest of 8, 4 and 2 by which a `width` x `height` JPEG can be decoded and still be at
    least as large as its letterbox into `fit` x `fit`; 1 when none can."""
    ratio = min(fit / width, fit / height)
    return next((f for f in _REDUCED_JPEG if f * ratio <= 1), 1)


def decode_image(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Decode an uploaded file to an (H, W, 3) uint8 RGB image, EXIF orientation applied.

    Grayscale and alpha images become 3-channel RGB (alpha dropped). Raises InvalidImage (empty or
    undecodable) and TooManyPixels (more than `max_pixels`, checked from the header first when the
    format allows, else after decoding).
    """
    return decode(data, max_pixels).image


def decode(data: bytes, max_pixels: int, *, fit: int | None = None) -> Decoded:
    """`decode_image`; with `fit`, a JPEG is decoded at the `jpeg_reduction` for a `fit` x `fit`
    letterbox. Only when the decoded shape says unambiguously whether EXIF rotated the image (the
    reduced sides differ, or the full ones are equal): the full size is then known exactly."""
    if not data:
        raise InvalidImage("empty image file")
    declared = header_size(data)
    if declared is not None and declared[0] * declared[1] > max_pixels:
        raise TooManyPixels(f"image is {declared[0]}x{declared[1]}, more than {max_pixels} pixels")
    factor = 1
    if fit is not None and declared is not None and data.startswith(b"\xff\xd8"):
        width, height = declared
        factor = jpeg_reduction(width, height, fit)
        if factor > 1 and width != height and -(-width // factor) == -(-height // factor):
            factor = 1  # a rotated and an unrotated result would look the same
    rgb = _imdecode_rgb(data, _REDUCED_JPEG.get(factor, cv2.IMREAD_COLOR))
    height, width = rgb.shape[:2]
    if factor > 1:
        assert declared is not None
        rotated = (height, width) != (-(-declared[1] // factor), -(-declared[0] // factor))
        width, height = (declared[1], declared[0]) if rotated else declared
    if height * width > max_pixels:
        raise TooManyPixels(f"image is {width}x{height}, more than {max_pixels} pixels")
    return Decoded(rgb, height, width)


def _imdecode_rgb(data: bytes, flags: int) -> npt.NDArray[np.uint8]:
    """`cv2.imdecode` with `flags` (a BGR colour mode), to RGB."""
    if _RGB is not None:
        flags = (flags & ~cv2.IMREAD_COLOR) | _RGB
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise InvalidImage(f"not a decodable image (supported: {SUPPORTED})")
    if _RGB is None:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.asarray(image, dtype=np.uint8)
