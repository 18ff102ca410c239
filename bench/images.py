"""The JPEGs a served benchmark sends: the user's files, or scikit-image's sample photos at 640x480.

The default set is six photos that ship inside scikit-image (no download), centre-cropped to 4:3
and resized to 640x480 (VGA, a common camera frame), JPEG quality 90: ~40-90 KB each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from service.core.errors import ServiceError
from service.core.images import IMAGE_SUFFIXES, decode_image

SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
SAMPLE_SIZE = (640, 480)  # width, height
JPEG_QUALITY = 90


def _cover(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop to the aspect ratio of `size` (width, height), then resize to it."""
    width, height = size
    h, w = rgb.shape[:2]
    if w * height > h * width:  # too wide
        crop = h * width // height
        rgb = rgb[:, (w - crop) // 2 : (w - crop) // 2 + crop]
    else:
        crop = w * height // width
        rgb = rgb[(h - crop) // 2 : (h - crop) // 2 + crop]
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buffer = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()


def sample_jpegs(size: tuple[int, int] = SAMPLE_SIZE) -> list[bytes]:
    """scikit-image's bundled photos as `size` JPEGs (needs scikit-image: the `bench` extra)."""
    from skimage import data

    return [encode_jpeg(_cover(getattr(data, name)()[..., :3], size)) for name in SAMPLE_PHOTOS]


def load_images(paths: Sequence[Path]) -> list[bytes]:
    """The files named, and the image files (by suffix) directly inside named folders, sorted.

    Each must decode (the server would answer 400 otherwise, which is not what a benchmark measures).
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    if not files:
        raise ValueError(f"no image files in {', '.join(map(str, paths))}")
    blobs = []
    for file in files:
        blob = file.read_bytes()
        try:
            decode_image(blob, max_pixels=1 << 30)
        except ServiceError as e:
            raise ValueError(f"{file}: {e}") from None
        blobs.append(blob)
    return blobs
