"""Box format helpers in pure numpy.

Boxes are ``(N, 4)`` arrays in pixels. Corner format ``xyxy`` is ``[x1, y1, x2, y2]`` with
``x1 <= x2`` and ``y1 <= y2`` for a valid box; centre format ``xywh`` is ``[cx, cy, w, h]``.

Floating-point outputs are float32, except that float64 inputs give float64 outputs (so exact
round trips stay exact); integer inputs give float32.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def result_float_dtype(*arrays: np.ndarray) -> type[np.floating]:
    """Return float64 if any of ``arrays`` is float64, else float32."""
    return np.float64 if any(a.dtype == np.float64 for a in arrays) else np.float32


def as_boxes(boxes: npt.ArrayLike, name: str = "boxes") -> np.ndarray:
    """Return ``boxes`` as an ``(N, 4)`` array (no copy if already one); raise ValueError otherwise."""
    array = np.asarray(boxes)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {array.shape}")
    return array


def xywh_to_xyxy(boxes: npt.ArrayLike) -> FloatArray:
    """Convert ``(N, 4)`` centre boxes ``[cx, cy, w, h]`` to corner boxes ``[x1, y1, x2, y2]``.

    Returns a new ``(N, 4)`` float32 array (float64 for float64 input); the input is not modified.
    """
    xywh = as_boxes(boxes)
    dtype = result_float_dtype(xywh)
    xywh = xywh.astype(np.float64, copy=False)
    half_wh = xywh[:, 2:4] / 2
    xyxy = np.concatenate((xywh[:, 0:2] - half_wh, xywh[:, 0:2] + half_wh), axis=1)
    return xyxy.astype(dtype, copy=False)


def box_area(boxes: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Area of ``(N, 4)`` xyxy boxes as an ``(N,)`` float64 array; inverted boxes count as zero area."""
    xyxy = as_boxes(boxes).astype(np.float64, copy=False)
    widths = np.clip(xyxy[:, 2] - xyxy[:, 0], 0.0, None)
    heights = np.clip(xyxy[:, 3] - xyxy[:, 1], 0.0, None)
    return widths * heights


def _pair(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, type[np.floating]]:
    """Both box sets as float64 ``(N, 4)`` / ``(M, 4)`` arrays, and the result dtype."""
    a = as_boxes(boxes_a, "boxes_a")
    b = as_boxes(boxes_b, "boxes_b")
    return a.astype(np.float64, copy=False), b.astype(np.float64, copy=False), result_float_dtype(a, b)


def _intersection(a64: np.ndarray, b64: np.ndarray) -> npt.NDArray[np.float64]:
    """``(N, M)`` pairwise intersection areas of float64 xyxy boxes."""
    top_left = np.maximum(a64[:, None, 0:2], b64[None, :, 0:2])
    bottom_right = np.minimum(a64[:, None, 2:4], b64[None, :, 2:4])
    overlap_wh = np.clip(bottom_right - top_left, 0.0, None)
    intersection: npt.NDArray[np.float64] = overlap_wh[..., 0] * overlap_wh[..., 1]
    return intersection


def box_iou(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatArray:
    """Pairwise intersection-over-union of ``(N, 4)`` and ``(M, 4)`` xyxy boxes.

    Returns an ``(N, M)`` float32 array (float64 if either input is float64), computed in float64.
    Pairs whose union is zero (e.g. two zero-area boxes) get IoU 0, never NaN.
    """
    a64, b64, dtype = _pair(boxes_a, boxes_b)
    intersection = _intersection(a64, b64)
    union = box_area(a64)[:, None] + box_area(b64)[None, :] - intersection
    iou: npt.NDArray[np.float64] = np.zeros_like(intersection)
    np.divide(intersection, union, out=iou, where=union > 0)
    return iou.astype(dtype, copy=False)


def box_ios(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatArray:
    """Pairwise intersection over the smaller box's area of ``(N, 4)`` and ``(M, 4)`` xyxy boxes.

    1.0 when one box lies inside the other (a box cut by a slice edge inside the whole object's box).
    Returns an ``(N, M)`` float32 array (float64 if either input is float64), computed in float64;
    0 where the smaller box has zero area.
    """
    a64, b64, dtype = _pair(boxes_a, boxes_b)
    intersection = _intersection(a64, b64)
    smaller = np.minimum(box_area(a64)[:, None], box_area(b64)[None, :])
    ios: npt.NDArray[np.float64] = np.zeros_like(intersection)
    np.divide(intersection, smaller, out=ios, where=smaller > 0)
    return ios.astype(dtype, copy=False)
