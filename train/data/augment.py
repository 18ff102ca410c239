"""YOLO training augmentation (mosaic, random scale/translate, HSV jitter, horizontal flip) and the
validation transform (the serving letterbox), in numpy + OpenCV.

Images are (H, W, 3) uint8 RGB; boxes are (N, 4) float32 xyxy in pixel *edge* coordinates (pixel
column ``i`` spans ``[i, i + 1)``), the convention of ``service.processing.letterbox_boxes``. All
randomness comes from the caller's ``numpy.random.Generator``, so a seeded generator reproduces the
same output.

The affine transform is scale + translation only (official YOLOR trains with degrees = shear =
perspective = 0), which keeps the box transform exact: a box maps to the box of the moved pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import numpy.typing as npt

from service.processing import Letterbox, letterbox, letterbox_boxes


@dataclass(frozen=True, eq=False)
class Example:
    """An image with its labels: ``image`` (H, W, 3) uint8 RGB, ``boxes`` (N, 4) float32 xyxy
    pixels, ``classes`` (N,) int64."""

    image: npt.NDArray[np.uint8]
    boxes: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (defaults: official YOLOR hyperparameters, translate 0.1).

    ``mosaic`` and ``flip_lr`` are probabilities; ``scale`` draws the zoom from ``1 ± scale``;
    ``translate`` moves the centre by up to that fraction of the output size; ``hsv_*`` are the
    maximum relative gains. A box is dropped when, after clipping, a side is under ``min_box_px``,
    its area is under ``min_area_ratio`` of its unclipped transformed area, or its aspect ratio
    exceeds ``max_aspect``.
    """

    mosaic: float = 1.0
    scale: float = 0.5
    translate: float = 0.1
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    flip_lr: float = 0.5
    pad_value: int = 114
    min_box_px: float = 2.0
    min_area_ratio: float = 0.1
    max_aspect: float = 20.0


def keep_boxes(clipped: np.ndarray, unclipped: np.ndarray, config: AugmentConfig) -> npt.NDArray[np.bool_]:
    """Which clipped boxes survive (see :class:`AugmentConfig`); both arrays (N, 4) xyxy."""
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    full_area = (unclipped[:, 2] - unclipped[:, 0]) * (unclipped[:, 3] - unclipped[:, 1])
    aspect = np.maximum(w / np.maximum(h, 1e-6), h / np.maximum(w, 1e-6))
    return (
        (w >= config.min_box_px)
        & (h >= config.min_box_px)
        & (w * h >= config.min_area_ratio * np.maximum(full_area, 1e-6))
        & (aspect <= config.max_aspect)
    )


def _clip_and_filter(
    example: Example, unclipped: np.ndarray, window: tuple[float, float, float, float], config: AugmentConfig
) -> Example:
    """``example`` with boxes ``unclipped`` clipped to ``window`` (x1, y1, x2, y2) and filtered."""
    x1, y1, x2, y2 = window
    clipped = unclipped.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], x1, x2)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], y1, y2)
    keep = keep_boxes(clipped, unclipped, config)
    return Example(example.image, clipped[keep].astype(np.float32), example.classes[keep])


def resize_long_side(example: Example, size: int) -> Example:
    """Resize so the longer side is ``size`` (INTER_LINEAR, as official training loads images)."""
    height, width = example.image.shape[:2]
    ratio = size / max(height, width)
    if ratio == 1:
        return example
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    image = cv2.resize(example.image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    scale = np.asarray([new_w / width, new_h / height] * 2, dtype=np.float32)
    return Example(np.asarray(image, np.uint8), example.boxes * scale, example.classes)


def mosaic(
    examples: Sequence[Example], size: int, rng: np.random.Generator, config: AugmentConfig
) -> Example:
    """Official YOLOR mosaic: four images (longer side resized to ``size``) meet at a random centre
    in ``[size/2, 3size/2)`` of a ``2size`` square canvas filled with ``pad_value``; each image keeps
    the corner that touches the centre. Returns the (2size, 2size) canvas and its clipped boxes.
    """
    if len(examples) != 4:
        raise ValueError(f"mosaic needs 4 examples, got {len(examples)}")
    canvas = np.full((2 * size, 2 * size, 3), config.pad_value, dtype=np.uint8)
    xc, yc = (int(v) for v in rng.uniform(size / 2, 3 * size / 2, size=2))
    boxes, classes = [], []
    for corner, example in enumerate(examples):
        tile = resize_long_side(example, size)
        h, w = tile.image.shape[:2]
        x1 = max(xc - w, 0) if corner in (0, 2) else xc
        x2 = xc if corner in (0, 2) else min(xc + w, 2 * size)
        y1 = max(yc - h, 0) if corner in (0, 1) else yc
        y2 = yc if corner in (0, 1) else min(yc + h, 2 * size)
        left = x1 - (xc - w) if corner in (0, 2) else 0  # first tile column shown
        top = y1 - (yc - h) if corner in (0, 1) else 0
        canvas[y1:y2, x1:x2] = tile.image[top : top + y2 - y1, left : left + x2 - x1]
        moved = tile.boxes + np.asarray([x1 - left, y1 - top] * 2, dtype=np.float32)
        placed = _clip_and_filter(Example(canvas, moved, tile.classes), moved, (x1, y1, x2, y2), config)
        boxes.append(placed.boxes)
        classes.append(placed.classes)
    return Example(canvas, np.concatenate(boxes).reshape(-1, 4), np.concatenate(classes).astype(np.int64))


def apply_affine(
    example: Example, scale: float, offset: tuple[float, float], size: int, config: AugmentConfig
) -> Example:
    """Map ``x -> scale * x + offset`` (edge coordinates) into a ``size`` square output.

    The image is warped with ``cv2.warpAffine`` (INTER_LINEAR, border ``pad_value``); OpenCV works
    in pixel-centre coordinates, hence the ``(scale - 1) / 2`` shift of its matrix. Boxes are
    transformed exactly, clipped to the output and filtered with :func:`keep_boxes`.
    """
    dx, dy = offset
    shift = (scale - 1) / 2
    matrix = np.asarray([[scale, 0, dx + shift], [0, scale, dy + shift]], dtype=np.float64)
    pad = (config.pad_value,) * 3
    image = cv2.warpAffine(example.image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=pad)
    moved = example.boxes * np.float32(scale) + np.asarray([dx, dy, dx, dy], dtype=np.float32)
    warped = Example(np.asarray(image, np.uint8), moved, example.classes)
    return _clip_and_filter(warped, moved, (0, 0, size, size), config)


def random_affine(example: Example, rng: np.random.Generator, size: int, config: AugmentConfig) -> Example:
    """Official ``random_perspective`` without rotation/shear: centre the input on the origin, zoom
    by ``U(1 - scale, 1 + scale)``, put the centre at ``U(0.5 ± translate) * size``."""
    height, width = example.image.shape[:2]
    zoom = float(rng.uniform(1 - config.scale, 1 + config.scale))
    tx, ty = (float(v) * size for v in rng.uniform(0.5 - config.translate, 0.5 + config.translate, size=2))
    return apply_affine(example, zoom, (tx - zoom * width / 2, ty - zoom * height / 2), size, config)


def hsv_jitter(
    image: np.ndarray, rng: np.random.Generator, h: float, s: float, v: float
) -> npt.NDArray[np.uint8]:
    """Official ``augment_hsv``: hue, saturation and value scaled by ``1 + U(-gain, gain)`` via LUTs."""
    gains = rng.uniform(-1, 1, size=3) * np.asarray([h, s, v]) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * gains[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), dtype=np.uint8)


def flip_horizontal(example: Example) -> Example:
    """Mirror the image left-right; box ``[x1, y1, x2, y2]`` becomes ``[W - x2, y1, W - x1, y2]``."""
    width = example.image.shape[1]
    boxes = example.boxes.copy()
    boxes[:, [0, 2]] = width - example.boxes[:, [2, 0]]
    return Example(np.ascontiguousarray(example.image[:, ::-1]), boxes, example.classes)


def augment(
    examples: Sequence[Example], rng: np.random.Generator, size: int, config: AugmentConfig
) -> Example:
    """One training example of ``size`` x ``size`` from 4 examples (mosaic) or 1 (letterbox).

    Order as in official training: mosaic or letterbox, random scale/translate, HSV, flip.
    """
    if len(examples) == 4:
        base = mosaic(examples, size, rng, config)
    elif len(examples) == 1:
        image, lb = letterbox(examples[0].image, size, color=config.pad_value)
        base = Example(image, letterbox_boxes(examples[0].boxes, lb), examples[0].classes)
    else:
        raise ValueError(f"augment takes 1 or 4 examples, got {len(examples)}")
    out = random_affine(base, rng, size, config)
    if config.hsv_h or config.hsv_s or config.hsv_v:
        out = replace(out, image=hsv_jitter(out.image, rng, config.hsv_h, config.hsv_s, config.hsv_v))
    if rng.random() < config.flip_lr:
        out = flip_horizontal(out)
    return out


def val_transform(example: Example, size: int) -> tuple[Example, Letterbox]:
    """Exactly the serving preprocessing: ``service.processing.letterbox`` to ``size`` square.

    Returns the letterboxed example (boxes mapped with ``letterbox_boxes``) and the ``Letterbox``
    record; ``service.processing.scale_boxes`` maps predictions back to original pixels.
    """
    image, lb = letterbox(example.image, size)
    boxes = letterbox_boxes(example.boxes, lb).astype(np.float32)
    return Example(image, boxes, example.classes), lb
