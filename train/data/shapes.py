"""Shape geometry for the synthetic dataset: one outline polygon (and optional hole) per class.

Vertices are computed with Python's ``math`` (not numpy's SIMD trig, whose last bit can differ
between CPUs) so the rasterised masks are the same on every machine. All randomness comes from
the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

SHAPE_NAMES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "cross", "ellipse", "ring")

_SHIFT = 4  # cv2 fixed-point bits: vertices on a 1/16 px grid
_Points = list[tuple[float, float]]


@dataclass(frozen=True)
class ShapeMask:
    """A rasterised shape: ``mask`` (h, w) bool whose top-left pixel is image pixel ``(top, left)``."""

    mask: npt.NDArray[np.bool_]
    top: int
    left: int


def _ellipse(a: float, b: float, theta: float) -> _Points:
    count = max(16, min(96, int(2 * math.pi * max(a, b) / 2)))
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    points = []
    for k in range(count):
        phi = 2 * math.pi * k / count
        x, y = a * math.cos(phi), b * math.sin(phi)
        points.append((x * cos_t - y * sin_t, x * sin_t + y * cos_t))
    return points


def _rotated(points: _Points, theta: float) -> _Points:
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    return [(x * cos_t - y * sin_t, x * sin_t + y * cos_t) for x, y in points]


def _star_points(r: float, inner: float, theta: float) -> _Points:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * inner
        phi = theta + math.pi * k / 5
        points.append((radius * math.cos(phi), radius * math.sin(phi)))
    return points


def _circle(rng: np.random.Generator, r: float) -> tuple[_Points, _Points | None]:
    return _ellipse(r, r, 0.0), None


def _rectangle(rng: np.random.Generator, r: float) -> tuple[_Points, _Points | None]:
    # r is the half-diagonal; the aspect stays away from the thin sticks that vanish when small
    aspect = float(rng.uniform(0.35, 1.0))
    half_w = r / math.sqrt(1 + aspect * aspect)
    half_h = half_w * aspect
    corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    return _rotated(corners, float(rng.uniform(0, math.pi))), None


def _triangle(rng: np.random.Generator, r: float) -> tuple[_Points, _Points | None]:
    theta = float(rng.uniform(0, 2 * math.pi))
    jitter = rng.uniform(-0.2, 0.2, size=3)
    points = []
    for k in range(3):
        phi = theta + 2 * math.pi * k / 3 + float(jitter[k])
        points.append((r * math.cos(phi), r * math.sin(phi)))
    return points, None


def _star(rng: np.random.Generator, r: float) -> tuple[_Points, _Points | None]:
    return _star_points(r, float(rng.uniform(0.38, 0.5)), float(rng.uniform(0, 2 * math.pi))), None


def _cross(rng: np.random.Generator, r: float) -> tuple[_Points, _Points | None]:
    ratio = float(rng.uniform(0.25, 0.36))  # arm half-thickness / arm length
    arm = r / math.sqrt(1 + ratio * ratio)  # the arm-end corners lie on the circle of radius r
    t = arm * ratio
    outline = [(t, -arm), (t, -t), (arm, -t), (arm, t), (t, t), (t, arm)]
    outline += [(-x, -y) for x, y in outline]
    return _rotated(outline, float(rng.uniform(0, math.pi / 2))), None


def _ellipse_shape(rng: np.random.Generator, r: float) -> tuple[_Points, _Points | None]:
    return _ellipse(r, r * float(rng.uniform(0.4, 0.62)), float(rng.uniform(0, math.pi))), None


def _ring(rng: np.random.Generator, r: float) -> tuple[_Points, _Points | None]:
    inner = r * float(rng.uniform(0.45, 0.62))
    return _ellipse(r, r, 0.0), _ellipse(inner, inner, 0.0)


_BUILDERS: tuple[Callable[[np.random.Generator, float], tuple[_Points, _Points | None]], ...] = (
    _circle,
    _rectangle,
    _triangle,
    _star,
    _cross,
    _ellipse_shape,
    _ring,
)


def _fixed_point(points: _Points, cx: float, cy: float, left: int, top: int) -> np.ndarray:
    """Vertices in cv2 fixed point; cv2 puts pixel centres at integers, edge coordinates minus 0.5."""
    scale = 1 << _SHIFT
    rows = [(round((cx + x - left - 0.5) * scale), round((cy + y - top - 0.5) * scale)) for x, y in points]
    return np.asarray(rows, dtype=np.int32).reshape(-1, 1, 2)


def render_shape(rng: np.random.Generator, class_id: int, cx: float, cy: float, size: float) -> ShapeMask:
    """Rasterise one random instance of class ``class_id`` centred at ``(cx, cy)`` (image pixels).

    ``size`` is the diameter of the shape's circumscribed circle in pixels. The mask is unclipped
    (it may extend past the image), so its pixel count is the shape's full area.
    """
    outline, hole = _BUILDERS[class_id](rng, size / 2)
    xs = [cx + x for x, _ in outline]
    ys = [cy + y for _, y in outline]
    left, top = math.floor(min(xs)) - 1, math.floor(min(ys)) - 1
    width, height = math.ceil(max(xs)) + 2 - left, math.ceil(max(ys)) + 2 - top
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [_fixed_point(outline, cx, cy, left, top)], 1, cv2.LINE_8, _SHIFT)
    if hole is not None:
        cv2.fillPoly(canvas, [_fixed_point(hole, cx, cy, left, top)], 0, cv2.LINE_8, _SHIFT)
    return ShapeMask(mask=canvas.astype(bool), top=top, left=left)
