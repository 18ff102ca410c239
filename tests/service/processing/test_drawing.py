"""Annotation drawing: boxes land where the detections are, nothing else changes, JPEG round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.processing import Detections
from service.processing.drawing import class_color, draw_detections, encode_jpeg

pytestmark = pytest.mark.unit


def detections(boxes, scores, ids) -> Detections:
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(ids, np.int64))


def test_draws_inside_the_box_area_only():
    image = np.full((200, 300, 3), 90, np.uint8)
    out = draw_detections(image, detections([[50, 80, 150, 160]], [0.87], [1]), ["a", "b"])
    changed = np.any(out != image, axis=2)
    assert np.all(image == 90)  # the input is not modified
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 49 and xs.max() <= 151  # the label sits above the box, within its width or so
    assert ys.max() <= 161 and ys.min() < 80  # a label above the box
    assert changed[120, 50] and changed[80, 100]  # left and top edges
    assert not changed[120, 100]  # the box interior is not filled
    edge_color = np.array(class_color(1))
    assert np.abs(out[110:130, 49:52].astype(int) - edge_color).max(axis=2).min() < 30  # anti-aliased


def test_label_goes_inside_when_there_is_no_room_above():
    image = np.zeros((100, 100, 3), np.uint8)
    out = draw_detections(image, detections([[10, 0, 60, 50]], [0.5], [0]), ["thing"])
    assert np.any(out[:20] != 0) and np.all(out[60:] == 0)


def test_unknown_class_ids_and_empty_detections_do_not_fail():
    image = np.zeros((50, 50, 3), np.uint8)
    assert np.array_equal(draw_detections(image, detections(np.zeros((0, 4)), [], []), ["a"]), image)
    draw_detections(image, detections([[1, 1, 20, 20]], [0.3], [7]), ["a"])


def test_class_colors_are_stable_and_distinct():
    colors = [class_color(i) for i in range(10)]
    assert colors == [class_color(i) for i in range(10)]
    assert len(set(colors)) == 10


def test_encode_jpeg_round_trip_keeps_size_and_colour_order():
    image = np.zeros((30, 40, 3), np.uint8)
    image[..., 0] = 255  # red in RGB
    decoded = cv2.imdecode(np.frombuffer(encode_jpeg(image), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (30, 40, 3)
    assert decoded[15, 20, 2] > 230 and decoded[15, 20, 0] < 25  # OpenCV reads BGR: red is channel 2
