"""Decoding uploads: formats, EXIF orientation, pixel limits before and after decoding, bad data."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from service.core import images
from service.core.errors import InvalidImage, TooManyPixels
from service.core.images import decode, decode_image, header_size, jpeg_reduction

pytestmark = pytest.mark.unit

BIG = 10**9


@pytest.fixture(autouse=True, params=["decoded-as-rgb", "decoded-as-bgr"])
def opencv_colour_order(request, monkeypatch):
    """Every test twice: OpenCV decoding straight to RGB (>= 4.10), and decoding BGR then converting
    (what older OpenCV versions do)."""
    if request.param == "decoded-as-bgr":
        monkeypatch.setattr(images, "_RGB", None)


def test_both_colour_orders_decode_the_same_pixels():
    data = encoded(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8), ".jpg")
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decode_image(data, BIG), reference)


def bgr_quadrants(height: int = 20, width: int = 40) -> np.ndarray:
    """Left half red, right half blue (BGR order, as OpenCV encodes)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (0, 0, 255)
    image[:, width // 2 :] = (255, 0, 0)
    return image


def encoded(image_bgr: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, image_bgr, params or [])
    assert ok
    return buffer.tobytes()


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only the Orientation tag (0x0112) after the SOI marker."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


RED, BLUE = np.array([255, 0, 0]), np.array([0, 0, 255])


def close(pixel: np.ndarray, color: np.ndarray) -> bool:
    return bool(np.abs(pixel.astype(int) - color).max() < 40)


@pytest.mark.parametrize(
    ("orientation", "shape", "red_at"),
    [
        (1, (20, 40, 3), (10, 2)),  # as stored: red on the left
        (3, (20, 40, 3), (10, 37)),  # rotated 180: red on the right
        (6, (40, 20, 3), (2, 10)),  # rotate 90 clockwise to view: red on top
        (8, (40, 20, 3), (37, 10)),  # rotate 90 counter-clockwise: red at the bottom
    ],
)
def test_exif_orientation_is_applied(orientation, shape, red_at):
    data = with_exif_orientation(
        encoded(bgr_quadrants(), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), orientation
    )
    ignoring = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert ignoring.shape == (20, 40, 3)  # the tag is really there and is what changes the result
    image = decode_image(data, BIG)
    assert image.shape == shape and image.dtype == np.uint8
    assert close(image[red_at], RED)  # RGB order


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff"])
def test_formats_decode_to_rgb(ext):
    image = decode_image(encoded(bgr_quadrants(), ext), BIG)
    assert image.shape == (20, 40, 3)
    assert close(image[10, 2], RED) and close(image[10, 37], BLUE)


@pytest.mark.parametrize(
    ("ext", "params"),
    [
        (".png", []),
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".bmp", []),
        (".webp", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    ],
)
@pytest.mark.parametrize(("height", "width"), [(20, 40), (333, 17), (1, 1)])
def test_header_size_matches_the_decoded_size(ext, params, height, width):
    data = encoded(np.full((height, width, 3), 77, np.uint8), ext, params)
    assert header_size(data) == (width, height)


def test_header_size_of_an_extended_webp():
    bgra = np.dstack([bgr_quadrants(21, 43), np.full((21, 43), 128, np.uint8)])
    data = encoded(bgra, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])  # lossy with alpha: a VP8X file
    assert data[12:16] == b"VP8X"
    assert header_size(data) == (43, 21)


def test_header_size_of_a_bmp_stored_top_down():
    data = bytearray(encoded(bgr_quadrants(), ".bmp"))
    data[22:26] = struct.pack("<i", -20)  # negative height: rows stored top to bottom
    assert header_size(bytes(data)) == (40, 20)


def test_header_size_unknown():
    assert header_size(encoded(bgr_quadrants(), ".tiff")) is None
    assert header_size(b"") is None
    assert header_size(b"\xff\xd8\xff") is None  # a JPEG cut before any frame header


def test_too_many_pixels_is_refused_from_the_header(monkeypatch):
    data = encoded(bgr_quadrants(), ".png")
    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(a))
    with pytest.raises(TooManyPixels, match="40x20"):
        decode_image(data, max_pixels=799)
    assert calls == []  # never decoded


def test_too_many_pixels_after_decoding_when_the_header_is_unknown():
    data = encoded(bgr_quadrants(), ".tiff")
    with pytest.raises(TooManyPixels):
        decode_image(data, max_pixels=799)
    assert decode_image(data, max_pixels=800).shape == (20, 40, 3)


def test_grayscale_and_alpha_become_rgb():
    gray = encoded(np.full((5, 6), 200, np.uint8), ".png")
    rgba = encoded(np.dstack([bgr_quadrants(), np.full((20, 40), 128, np.uint8)]), ".png")
    assert decode_image(gray, BIG).shape == (5, 6, 3)
    assert np.all(decode_image(gray, BIG) == 200)
    assert close(decode_image(rgba, BIG)[10, 2], RED)


@pytest.mark.parametrize(
    "data", [b"", b"hello", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8" + b"\xff" * 50]
)
def test_undecodable_data(data):
    with pytest.raises(InvalidImage):
        decode_image(data, BIG)


@pytest.mark.parametrize(
    ("width", "height", "fit", "factor"),
    [(640, 480, 256, 2), (640, 480, 320, 2), (640, 480, 321, 1), (4000, 3000, 640, 4), (4000, 3000, 256, 8)],
)
def test_jpeg_reduction_never_goes_below_the_letterbox(width, height, fit, factor):
    assert jpeg_reduction(width, height, fit) == factor
    ratio = min(fit / width, fit / height)
    assert -(-width // factor) >= round(width * ratio) and -(-height // factor) >= round(height * ratio)


def quadrants_jpeg(width: int, height: int, orientation: int = 1) -> bytes:
    jpeg = encoded(cv2.resize(bgr_quadrants(), (width, height)), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    return with_exif_orientation(jpeg, orientation)


@pytest.mark.parametrize(
    ("orientation", "shape", "red_at"),
    [(1, (757, 1001), (378, 20)), (6, (1001, 757), (20, 378))],  # red left; rotated: red on top
)
def test_reduced_decoding_reports_the_full_size_and_keeps_the_orientation(orientation, shape, red_at):
    data = quadrants_jpeg(1001, 757, orientation)
    full, reduced = decode(data, BIG), decode(data, BIG, fit=240)  # 1001 px -> 240: 1/4
    assert full.image.shape[:2] == shape and (full.height, full.width) == shape
    assert (reduced.height, reduced.width) == shape  # the full image's, not the decoded one's
    assert reduced.image.shape[:2] == tuple(-(-side // 4) for side in shape)
    assert close(reduced.image[red_at[0] // 4, red_at[1] // 4], RED)
    assert close(full.image[red_at], RED)


def test_reduced_decoding_is_skipped_when_it_cannot_tell_a_rotation():
    data = quadrants_jpeg(1000, 999, 6)  # 1/8: 125 x 125 either way
    decoded = decode(data, BIG, fit=100)
    assert decoded.image.shape[:2] == (1000, 999) and (decoded.height, decoded.width) == (1000, 999)


def test_reduced_decoding_is_for_large_jpegs_only():
    png = encoded(cv2.resize(bgr_quadrants(), (800, 400)), ".png")
    assert decode(png, BIG, fit=100).image.shape[:2] == (400, 800)
    small = quadrants_jpeg(300, 200)
    assert decode(small, BIG, fit=200).image.shape[:2] == (200, 300)  # 1/2 would be below 200 px


def test_the_pixel_limit_counts_the_full_image_when_reduced():
    data = quadrants_jpeg(1000, 800)
    with pytest.raises(TooManyPixels, match="1000x800"):
        decode(data, max_pixels=799_999, fit=100)
    assert decode(data, max_pixels=800_000, fit=100).image.shape[:2] == (100, 125)
