"""Decoding uploaded images safely: size checks before and after decoding, EXIF orientation, RGB.

OpenCV cannot read an image header without decoding, so `header_size` reads the width and height of
PNG, JPEG, GIF, BMP and WebP files from their first bytes: a small file that declares a huge canvas
(a decompression bomb) is refused before any pixel is allocated. Other formats (TIFF) are checked
after decoding.

EXIF orientation: `cv2.imdecode(..., cv2.IMREAD_COLOR)` applies a JPEG's EXIF Orientation tag
(rotation/mirroring) unless `IMREAD_IGNORE_ORIENTATION` is given, so the decoded image and the
returned width/height are as a viewer shows them (`tests/service/test_images.py` proves it with a
hand-built EXIF segment).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np
import numpy.typing as npt

from service.errors import InvalidImage, TooManyPixels

SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI


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


def decode_image(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Decode an uploaded file to an (H, W, 3) uint8 RGB image, EXIF orientation applied.

    Grayscale and alpha images become 3-channel RGB (alpha dropped). Raises InvalidImage (empty or
    undecodable) and TooManyPixels (more than `max_pixels`, checked from the header first when the
    format allows, else after decoding).
    """
    if not data:
        raise InvalidImage("empty image file")
    declared = header_size(data)
    if declared is not None and declared[0] * declared[1] > max_pixels:
        raise TooManyPixels(f"image is {declared[0]}x{declared[1]}, more than {max_pixels} pixels")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None or bgr.size == 0:
        raise InvalidImage(f"not a decodable image (supported: {SUPPORTED})")
    height, width = bgr.shape[:2]
    if height * width > max_pixels:
        raise TooManyPixels(f"image is {width}x{height}, more than {max_pixels} pixels")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
