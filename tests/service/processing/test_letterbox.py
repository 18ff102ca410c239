"""Letterbox against the official YOLOR formula, its exact box inverse, and tensor packing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.processing import (
    Letterbox,
    letterbox,
    letterbox_boxes,
    letterbox_tensor,
    scale_boxes,
    to_input_tensor,
)

pytestmark = pytest.mark.unit


def official_letterbox(
    img: np.ndarray, new_shape: int | tuple[int, int], scaleup: bool = True
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Literal copy of official YOLOR ``letterbox`` with ``auto=False, scaleFill=False``."""
    shape = img.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # noqa: RUF046
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))  # noqa: RUF046
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))  # noqa: RUF046
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return img, (top, bottom, left, right)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("hw", "size", "pads"),
    [
        ((480, 640), 640, (80, 80, 0, 0)),
        ((333, 500), 320, (53, 54, 0, 0)),
        ((1, 1), 64, (0, 0, 0, 0)),
        ((1000, 10), 256, (0, 0, 126, 127)),
        ((720, 1280), (384, 640), (12, 12, 0, 0)),
        ((100, 201), 640, None),
        ((37, 41), (96, 160), None),
    ],
)
def test_matches_official_letterbox(
    hw: tuple[int, int], size: int | tuple[int, int], pads: tuple[int, int, int, int] | None
) -> None:
    image = random_image(*hw)
    expected, official_pads = official_letterbox(image, size)
    if pads is not None:
        assert official_pads == pads
    for scaleup in (True, False):
        expected, official_pads = official_letterbox(image, size, scaleup=scaleup)
        out, lb = letterbox(image, size, scaleup=scaleup)
        np.testing.assert_array_equal(out, expected)
        assert (lb.pad_top, lb.pad_left) == (official_pads[0], official_pads[2])


@pytest.mark.parametrize(
    "hw", [(720, 1280), (1280, 720), (500, 500), (1, 1), (2, 3), (3000, 4000), (4000, 7)]
)
@pytest.mark.parametrize("size", [640, (384, 640), 32])
def test_output_shape_border_and_centring(hw: tuple[int, int], size: int | tuple[int, int]) -> None:
    image = np.full((*hw, 3), 7, dtype=np.uint8)
    out, lb = letterbox(image, size)
    target = (size, size) if isinstance(size, int) else size
    assert out.shape == (*target, 3) and out.dtype == np.uint8
    assert lb.source_hw == hw and lb.target_hw == target
    new_h, new_w = round(hw[0] * lb.scale_y), round(hw[1] * lb.scale_x)
    content = np.zeros(target, dtype=bool)
    content[lb.pad_top : lb.pad_top + new_h, lb.pad_left : lb.pad_left + new_w] = True
    assert (out[content] == 7).all()
    assert (out[~content] == 114).all()
    assert abs((target[0] - new_h - lb.pad_top) - lb.pad_top) <= 1
    assert abs((target[1] - new_w - lb.pad_left) - lb.pad_left) <= 1
    assert new_h == target[0] or new_w == target[1]


def test_no_resize_places_exact_content_centred_and_copies() -> None:
    image = random_image(100, 60)
    before = image.copy()
    out, lb = letterbox(image, 128, color=0, scaleup=False)
    assert (lb.scale_x, lb.scale_y, lb.pad_top, lb.pad_left) == (1.0, 1.0, 14, 34)
    np.testing.assert_array_equal(out[14:114, 34:94], image)
    assert out.sum() == image.astype(np.int64).sum()  # border is color 0
    same_size, _ = letterbox(image, (100, 60))
    np.testing.assert_array_equal(same_size, image)
    assert not np.shares_memory(same_size, image)
    np.testing.assert_array_equal(image, before)


def test_accepts_non_contiguous_rgb_view() -> None:
    image = random_image(50, 80)
    out, _ = letterbox(image[..., ::-1], 64)
    expected, _ = official_letterbox(np.ascontiguousarray(image[..., ::-1]), 64)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 1), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((0, 10, 3), dtype=np.uint8),
    ],
)
def test_rejects_unsupported_images(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="image"):
        letterbox(image, 64)


@pytest.mark.parametrize("size", [0, -5, (64,), (64, 0), (64.0, 64)])
def test_rejects_bad_sizes(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        letterbox(random_image(8, 8), size)  # type: ignore[arg-type]


def random_boxes_inside(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    xs = np.sort(rng.uniform(0, width, size=(count, 2)), axis=1)
    ys = np.sort(rng.uniform(0, height, size=(count, 2)), axis=1)
    return np.stack((xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]), axis=1)


@pytest.mark.parametrize("hw", [(480, 640), (333, 500), (1, 1), (1000, 10), (3000, 4000), (7, 1999)])
@pytest.mark.parametrize("size", [640, (384, 640), 256])
def test_box_round_trip_is_exact(hw: tuple[int, int], size: int | tuple[int, int]) -> None:
    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    _, lb = letterbox(np.zeros((*hw, 3), dtype=np.uint8), size)
    boxes = random_boxes_inside(rng, *hw, count=50)
    before = boxes.copy()
    forward = letterbox_boxes(boxes, lb)
    for clip in (True, False):
        np.testing.assert_allclose(scale_boxes(forward, lb, clip=clip), boxes, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(boxes, before)
    back32 = scale_boxes(forward.astype(np.float32), lb)
    assert back32.dtype == np.float32
    np.testing.assert_allclose(back32, boxes, rtol=1e-5, atol=1e-4)


def test_full_image_box_maps_onto_content_region() -> None:
    _, lb = letterbox(random_image(333, 500), 320)
    forward = letterbox_boxes(np.array([[0, 0, 500, 333]], dtype=np.float32), lb)
    np.testing.assert_allclose(forward, [[0, 53, 320, 53 + 213]], rtol=0, atol=1e-4)


def test_scale_boxes_clips_to_original_image() -> None:
    lb = Letterbox(
        scale_x=0.5, scale_y=0.5, pad_left=0, pad_top=80, source_hw=(960, 1280), target_hw=(640, 640)
    )
    boxes = np.array([[-10, 0, 700, 100], [100, 700, 200, 720]], dtype=np.float32)
    before = boxes.copy()
    clipped = scale_boxes(boxes, lb)
    np.testing.assert_array_equal(clipped, [[0, 0, 1280, 40], [200, 960, 400, 960]])
    np.testing.assert_array_equal(
        scale_boxes(boxes, lb, clip=False), [[-20, -160, 1400, 40], [200, 1240, 400, 1280]]
    )
    np.testing.assert_array_equal(boxes, before)
    assert scale_boxes(np.zeros((0, 4), dtype=np.float32), lb).shape == (0, 4)


def test_to_input_tensor_layout_and_range() -> None:
    images = [random_image(32, 48, seed) for seed in range(3)]
    tensor = to_input_tensor(images)
    assert tensor.shape == (3, 3, 32, 48)
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    for index, image in enumerate(images):
        for channel in range(3):
            np.testing.assert_array_equal(
                tensor[index, channel], image[..., channel].astype(np.float32) / 255
            )


@pytest.mark.parametrize(
    "images",
    [[], [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], [np.zeros((8, 8), np.uint8)]],
)
def test_to_input_tensor_rejects_bad_batches(images: list[np.ndarray]) -> None:
    with pytest.raises(ValueError):
        to_input_tensor(images)


@pytest.mark.parametrize(
    ("height", "width"), [(64, 64), (48, 64), (100, 37), (1, 500), (640, 480), (63, 65), (700, 1000)]
)
@pytest.mark.parametrize("size", [64, (64, 96)])
def test_letterbox_tensor_equals_letterbox_then_to_input_tensor(height, width, size):
    image = np.random.default_rng(height * width).integers(0, 256, (height + 9, width + 7, 3), dtype=np.uint8)
    window = image[4 : 4 + height, 3 : 3 + width]  # a view, as a window of a tiled image is
    boxed, expected_lb = letterbox(window, size, color=90)
    tensor, lb = letterbox_tensor(window, size, color=90)
    assert lb == expected_lb
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_array_equal(tensor, to_input_tensor([boxed])[0])  # bit for bit
