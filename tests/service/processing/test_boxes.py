"""Box conversion and IoU against hand-computed values and a pure-Python reference."""

from __future__ import annotations

import numpy as np
import pytest

from service.processing import box_ios, box_iou, xywh_to_xyxy
from tests.support.references import reference_iou

pytestmark = pytest.mark.unit


def random_xyxy(rng: np.random.Generator, count: int, degenerate_fraction: float = 0.2) -> np.ndarray:
    top_left = rng.uniform(0, 100, size=(count, 2))
    size = rng.uniform(0, 40, size=(count, 2))
    size[rng.random(count) < degenerate_fraction, rng.integers(0, 2)] = 0.0
    return np.concatenate((top_left, top_left + size), axis=1)


def test_xywh_to_xyxy_known_values_and_no_mutation() -> None:
    xywh = np.array([[10, 20, 4, 6], [0, 0, 0, 0], [5.5, 1.5, 3, 1]], dtype=np.float32)
    before = xywh.copy()
    xyxy = xywh_to_xyxy(xywh)
    expected = np.array([[8, 17, 12, 23], [0, 0, 0, 0], [4, 1, 7, 2]], dtype=np.float32)
    assert xyxy.dtype == np.float32
    np.testing.assert_array_equal(xyxy, expected)
    np.testing.assert_array_equal(xywh, before)


def test_xywh_to_xyxy_dtypes_and_empty() -> None:
    assert xywh_to_xyxy(np.zeros((2, 4), dtype=np.float64)).dtype == np.float64
    assert xywh_to_xyxy(np.zeros((2, 4), dtype=np.int32)).dtype == np.float32
    assert xywh_to_xyxy(np.zeros((0, 4), dtype=np.float32)).shape == (0, 4)


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 2, 4)])
def test_bad_box_shapes_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        xywh_to_xyxy(np.zeros(shape))
    with pytest.raises(ValueError, match="shape"):
        box_iou(np.zeros(shape), np.zeros((1, 4)))


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 2, 1]], dtype=np.float32)
    b = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6], [0, 0, 1, 1]], dtype=np.float32)
    iou = box_iou(a, b)
    expected = np.array([[1.0, 1 / 3, 0.0, 0.25], [0.5, 0.2, 0.0, 0.5]], dtype=np.float32)
    assert iou.shape == (2, 4)
    assert iou.dtype == np.float32
    np.testing.assert_allclose(iou, expected, rtol=1e-6)


def test_box_iou_zero_area_is_zero_not_nan() -> None:
    point = np.array([[3, 3, 3, 3], [1, 1, 5, 1], [4, 2, 2, 4]], dtype=np.float32)  # point, line, inverted
    iou = box_iou(point, np.concatenate((point, [[0, 0, 10, 10]])))
    assert not np.isnan(iou).any()
    np.testing.assert_array_equal(iou, np.zeros((3, 4), dtype=np.float32))


@pytest.mark.parametrize("seed", range(5))
def test_box_iou_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = random_xyxy(rng, 30), random_xyxy(rng, 20)
    iou = box_iou(a, b)
    expected = [[reference_iou(list(x), list(y)) for y in b] for x in a]
    assert iou.dtype == np.float64
    np.testing.assert_array_equal(iou, np.asarray(expected))
    assert box_iou(a.astype(np.float32), b.astype(np.float32)).dtype == np.float32
    assert (iou >= 0).all() and (iou <= 1).all()


def test_box_iou_empty_inputs() -> None:
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    assert box_iou(np.zeros((2, 4)), np.zeros((0, 4))).shape == (2, 0)


def test_box_ios_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    a = np.sort(rng.uniform(0, 50, size=(9, 2, 2)), axis=1).transpose(0, 2, 1).reshape(9, 4)[:, [0, 2, 1, 3]]
    b = np.concatenate((a[:3], [[5, 5, 5, 9]]))  # shared boxes and a zero-area one
    ios = box_ios(a, b)
    for i, box_a in enumerate(a):
        for j, box_b in enumerate(b):
            w = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
            h = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
            smaller = min(
                (box_a[2] - box_a[0]) * (box_a[3] - box_a[1]), (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
            )
            assert ios[i, j] == pytest.approx(w * h / smaller if smaller > 0 else 0.0, abs=1e-6)
    assert np.diag(ios[:3, :3]) == pytest.approx(1.0)
    assert box_ios([[0, 0, 10, 10]], [[2, 2, 4, 4]])[0, 0] == pytest.approx(1.0)  # inside: 1 whatever the IoU
