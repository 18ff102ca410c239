"""Augmentation keeps boxes on the pixels they label; the validation transform is the serving letterbox."""

from __future__ import annotations

import numpy as np
import pytest

from service.processing import letterbox, scale_boxes
from train.data.augment import (
    AugmentConfig,
    Example,
    apply_affine,
    augment,
    flip_horizontal,
    hsv_jitter,
    keep_boxes,
    mosaic,
    val_transform,
)

pytestmark = pytest.mark.unit

COLOURS = np.asarray([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
GEOMETRY_ONLY = AugmentConfig(hsv_h=0, hsv_s=0, hsv_v=0, flip_lr=0)


def rectangle(height: int, width: int, box: tuple[int, int, int, int], class_id: int) -> Example:
    """A dark-grey image with one solid rectangle of colour ``class_id`` covering ``box`` (xyxy)."""
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = COLOURS[class_id]
    return Example(image, np.asarray([box], np.float32), np.asarray([class_id], np.int64))


def pixel_box(image: np.ndarray, class_id: int) -> np.ndarray | None:
    """Tight xyxy box of the pixels that are mostly colour ``class_id`` (None if there are none)."""
    target = COLOURS[class_id].astype(int)
    mask = np.abs(image.astype(int) - target).max(axis=2) < 100
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def assert_boxes_on_pixels(out: Example, tolerance: float = 1.0) -> int:
    for box, class_id in zip(out.boxes, out.classes, strict=True):
        found = pixel_box(out.image, int(class_id))
        assert found is not None, f"box {box} of class {class_id} has no pixels"
        np.testing.assert_allclose(box, found, atol=tolerance)
    return len(out.boxes)


def random_rectangles(rng: np.random.Generator, count: int) -> list[Example]:
    examples = []
    for class_id in range(count):
        height, width = (int(v) for v in rng.integers(60, 160, size=2))
        w, h = int(rng.integers(12, width // 2)), int(rng.integers(12, height // 2))
        x1, y1 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        examples.append(rectangle(height, width, (x1, y1, x1 + w, y1 + h), class_id))
    return examples


@pytest.mark.parametrize("count", [4, 1])
def test_mosaic_and_affine_keep_boxes_on_the_moved_pixels(count: int) -> None:
    checked = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        out = augment(random_rectangles(rng, count), rng, 128, GEOMETRY_ONLY)
        assert out.image.shape == (128, 128, 3) and out.image.dtype == np.uint8
        assert out.boxes.dtype == np.float32 and out.classes.dtype == np.int64
        assert np.all(out.boxes >= 0) and np.all(out.boxes <= 128)
        checked += assert_boxes_on_pixels(out)
    assert checked >= 10 * count  # the mosaic crop keeps about half of the four tiles


def test_mosaic_puts_the_four_images_around_a_seeded_centre() -> None:
    solids = [Example(np.full((50, 70, 3), c, np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
              for c in COLOURS]  # fmt: skip
    out = mosaic(solids, 64, np.random.default_rng(3), GEOMETRY_ONLY)
    xc, yc = (int(v) for v in np.random.default_rng(3).uniform(32, 96, size=2))
    assert out.image.shape == (128, 128, 3)
    for (y, x), colour in zip([(yc - 1, xc - 1), (yc - 1, xc), (yc, xc - 1), (yc, xc)], COLOURS, strict=True):
        np.testing.assert_array_equal(out.image[y, x], colour)


def test_affine_with_known_parameters_moves_clips_and_drops_boxes() -> None:
    example = rectangle(100, 100, (20, 30, 60, 50), 0)
    out = apply_affine(example, 0.5, (10, 20), 64, GEOMETRY_ONLY)
    np.testing.assert_allclose(out.boxes, [[20, 35, 40, 45]])
    assert_boxes_on_pixels(out, tolerance=1.0)
    np.testing.assert_array_equal(out.image[0, 63], [114, 114, 114])  # outside the source: pad value
    clipped = apply_affine(example, 1.0, (-40, 0), 64, GEOMETRY_ONLY)
    np.testing.assert_allclose(clipped.boxes, [[0, 30, 20, 50]])  # half the box left the image
    assert_boxes_on_pixels(clipped, tolerance=1.0)
    gone = apply_affine(example, 1.0, (-57, 0), 64, GEOMETRY_ONLY)  # 3 of 40 px columns remain
    assert len(gone.boxes) == 0 and len(gone.classes) == 0


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.5, 2.0, 3.0])
def test_affine_boxes_match_pixels_to_half_a_pixel(scale: float) -> None:
    # a box edge can only be compared to whole pixels, so 0.5 px is exact; OpenCV's pixel-centre
    # convention, if ignored, shows up as errors of (scale - 1) / 2 on top of that
    out = apply_affine(rectangle(100, 100, (20, 30, 61, 51), 0), scale, (3.3, -7.1), 128, GEOMETRY_ONLY)
    assert assert_boxes_on_pixels(out, tolerance=0.5 + 1e-4) == 1


def test_keep_boxes_thresholds() -> None:
    unclipped = np.asarray(
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 100], [0, 0, 50, 2.4], [0, 0, 10, 10]]
    )
    clipped = np.asarray([[0, 0, 10, 10], [0, 0, 1.9, 10], [0, 0, 9, 100], [0, 0, 50, 2.4], [0, 0, 2, 5]])
    assert keep_boxes(clipped, unclipped, AugmentConfig()).tolist() == [True, False, False, False, True]


def test_flip_mirrors_image_and_boxes() -> None:
    example = rectangle(40, 90, (10, 5, 30, 25), 2)
    flipped = flip_horizontal(example)
    np.testing.assert_array_equal(flipped.boxes, [[60, 5, 80, 25]])
    assert_boxes_on_pixels(flipped, tolerance=0)
    twice = flip_horizontal(flipped)
    np.testing.assert_array_equal(twice.image, example.image)
    np.testing.assert_array_equal(twice.boxes, example.boxes)


def test_hsv_value_gain_matches_the_official_lut_on_grey() -> None:
    grey = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    out = hsv_jitter(grey, np.random.default_rng(4), 0.0, 0.0, 0.4)
    gain = np.random.default_rng(4).uniform(-1, 1, size=3)[2] * 0.4 + 1
    expected = np.clip(np.arange(256) * gain, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[0, :, 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_augment_is_deterministic_given_the_generator() -> None:
    examples = random_rectangles(np.random.default_rng(0), 4)
    a = augment(examples, np.random.default_rng(5), 96, AugmentConfig())
    b = augment(examples, np.random.default_rng(5), 96, AugmentConfig())
    c = augment(examples, np.random.default_rng(6), 96, AugmentConfig())
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("shape", [(90, 160), (160, 90), (64, 64), (300, 200)])
def test_val_transform_is_the_serving_letterbox_and_scale_boxes_inverts_it(shape: tuple[int, int]) -> None:
    height, width = shape
    example = rectangle(height, width, (width // 4, height // 3, width // 2, height - 5), 1)
    out, lb = val_transform(example, 128)
    expected_image, expected_lb = letterbox(example.image, 128)
    np.testing.assert_array_equal(out.image, expected_image)
    assert lb == expected_lb
    assert_boxes_on_pixels(out, tolerance=1.0)
    np.testing.assert_allclose(scale_boxes(out.boxes, lb), example.boxes, atol=1e-3)
