"""NMS, batched NMS, select_detections and raw decoding against brute-force references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.processing import (
    Detections,
    batched_nms,
    decode_raw_predictions,
    merge_detections,
    nms,
    select_detections,
)
from tests.support.references import reference_iou

pytestmark = pytest.mark.unit

THRESHOLDS = (0.0, 0.3, 0.45, 0.5, 0.7, 1.0)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS in plain Python; ties in score keep input order."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    box_list = boxes.tolist()
    kept: list[int] = []
    for i in order:
        if all(reference_iou(box_list[i], box_list[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def reference_batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, threshold: float
) -> list[int]:
    kept: list[int] = []
    for class_id in set(class_ids.tolist()):
        members = [i for i in range(len(scores)) if class_ids[i] == class_id]
        kept += [members[j] for j in reference_nms(boxes[members], scores[members], threshold)]
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered boxes (heavy overlap), exact duplicates, zero-area boxes and tied scores."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 60))
    centres = rng.uniform(0, 200, size=(int(rng.integers(1, 5)), 2))
    centre = centres[rng.integers(0, len(centres), size=count)] + rng.normal(0, 4, size=(count, 2))
    size = rng.uniform(1, 40, size=(count, 2))
    size[rng.random(count) < 0.1, 0] = 0.0
    boxes = np.concatenate((centre - size / 2, centre + size / 2), axis=1).astype(np.float32)
    duplicates = rng.random(count) < 0.1
    if count > 1:
        boxes[duplicates] = boxes[0]
    scores = rng.random(count).astype(np.float32)
    if seed % 2:
        scores = np.round(scores * 4).astype(np.float32) / 4  # many exact ties
    class_ids = rng.integers(0, 3, size=count).astype(np.int64)
    return boxes, scores, class_ids


@pytest.mark.parametrize("seed", range(120))
def test_nms_matches_reference(seed: int) -> None:
    boxes, scores, class_ids = random_case(seed)
    for threshold in THRESHOLDS:
        kept = nms(boxes, scores, threshold)
        assert kept.dtype == np.int64
        assert kept.tolist() == reference_nms(boxes, scores, threshold)
        assert batched_nms(boxes, scores, class_ids, threshold).tolist() == reference_batched_nms(
            boxes, scores, class_ids, threshold
        )
        agnostic = batched_nms(boxes, scores, class_ids, threshold, agnostic=True)
        np.testing.assert_array_equal(agnostic, kept)


def test_nms_threshold_is_strict() -> None:
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], dtype=np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_nms_ties_and_empty() -> None:
    boxes = np.array([[0, 0, 10, 10]] * 3, dtype=np.float32)
    assert nms(boxes, np.array([0.5, 0.7, 0.7], dtype=np.float32), 0.5).tolist() == [1]
    assert nms(np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, np.zeros(2), 0.5)


def test_batched_nms_has_no_coordinate_offset() -> None:
    """Different classes never interact, however large the coordinates (no max_wh trick)."""
    boxes = np.array(
        [[0, 0, 100, 100], [0, 0, 100, 100], [7680, 0, 7780, 100], [1e5, 1e5, 1e5 + 50, 1e5 + 50]],
        dtype=np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    assert batched_nms(boxes, scores, np.array([0, 1, 0, 1]), 0.5).tolist() == [0, 1, 2, 3]
    assert batched_nms(boxes, scores, np.array([0, 0, 1, 1]), 0.5).tolist() == [0, 2, 3]
    assert batched_nms(boxes, scores, np.array([0, 1, 0, 1]), 0.5, agnostic=True).tolist() == [0, 2, 3]


def _overlapping_candidates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [40, 40, 50, 50], [60, 0, 70, 9]],
        dtype=np.float32,
    )
    scores = np.array([0.9, 0.85, 0.3, 0.6, 0.25, 0.95], dtype=np.float32)
    class_ids = np.array([0, 0, 1, 2, 1, 2], dtype=np.int64)
    return boxes, scores, class_ids


def test_select_detections_conf_nms_and_order() -> None:
    boxes, scores, class_ids = _overlapping_candidates()
    dets = select_detections(boxes, scores, class_ids, conf=0.25, iou=0.5, max_det=100)
    assert isinstance(dets, Detections)
    # index 1 is suppressed by 0 (same class); 3 overlaps 0 but is class 2; 4 has score == conf.
    np.testing.assert_array_equal(dets.scores, scores[[5, 0, 3, 2]])
    np.testing.assert_array_equal(dets.boxes, boxes[[5, 0, 3, 2]])
    np.testing.assert_array_equal(dets.class_ids, [2, 0, 2, 1])
    assert (dets.boxes.dtype, dets.scores.dtype, dets.class_ids.dtype) == (np.float32, np.float32, np.int64)
    assert len(dets) == 4
    agnostic = select_detections(boxes, scores, class_ids, conf=0.25, iou=0.5, max_det=100, agnostic=True)
    np.testing.assert_array_equal(agnostic.scores, scores[[5, 0, 2]])


@pytest.mark.parametrize(
    ("classes", "expected"), [(None, [5, 0, 3, 2]), ([], [5, 0, 3, 2]), ([0, 1], [0, 2])]
)
def test_select_detections_class_filter(classes: list[int] | None, expected: list[int]) -> None:
    boxes, scores, class_ids = _overlapping_candidates()
    dets = select_detections(boxes, scores, class_ids, conf=0.25, iou=0.5, max_det=100, classes=classes)
    np.testing.assert_array_equal(dets.scores, scores[expected])


def test_select_detections_max_det_keeps_top_scores() -> None:
    boxes, scores, class_ids = _overlapping_candidates()
    dets = select_detections(boxes, scores, class_ids, conf=0.0, iou=0.5, max_det=2)
    np.testing.assert_array_equal(dets.scores, scores[[5, 0]])
    empty = select_detections(boxes, scores, class_ids, conf=1.0, iou=0.5, max_det=2)
    assert empty.boxes.shape == (0, 4) and len(empty) == 0


@pytest.mark.parametrize("seed", range(20))
def test_select_detections_matches_reference(seed: int) -> None:
    boxes, scores, class_ids = random_case(seed)
    dets = select_detections(boxes, scores, class_ids, conf=0.3, iou=0.45, max_det=7, classes=[0, 2])
    candidates = np.flatnonzero((scores > 0.3) & np.isin(class_ids, [0, 2]))
    kept = reference_batched_nms(boxes[candidates], scores[candidates], class_ids[candidates], 0.45)[:7]
    np.testing.assert_array_equal(dets.boxes, boxes[candidates][kept])
    np.testing.assert_array_equal(dets.class_ids, class_ids[candidates][kept])
    assert (np.diff(dets.scores) <= 0).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"conf": -0.1, "iou": 0.5, "max_det": 1},
        {"conf": 1.1, "iou": 0.5, "max_det": 1},
        {"conf": 0.5, "iou": -0.01, "max_det": 1},
        {"conf": 0.5, "iou": 1.5, "max_det": 1},
        {"conf": 0.5, "iou": 0.5, "max_det": 0},
        {"conf": 0.5, "iou": 0.5, "max_det": 2.5},
    ],
)
def test_select_detections_validates_arguments(kwargs: dict[str, Any]) -> None:
    boxes, scores, class_ids = _overlapping_candidates()
    with pytest.raises(ValueError):
        select_detections(boxes, scores, class_ids, **kwargs)


def test_decode_raw_predictions_hand_built() -> None:
    pred = np.array(
        [
            [10, 20, 4, 6, 0.9, 0.1, 0.8, 0.3],  # kept: class 1, score 0.72
            [50, 50, 10, 10, 0.2, 1.0, 1.0, 1.0],  # obj below conf: dropped despite cls
            [30, 30, 2, 2, 1.0, 0.6, 0.6, 0.1],  # tie: first class wins, score 0.6
            [5, 5, 2, 2, 0.25, 1.0, 0.0, 0.0],  # obj == conf: dropped (strict)
            [5, 5, 2, 2, 0.5, 0.5, 0.0, 0.0],  # score == 0.25 == conf: dropped (strict)
            [7, 9, 2, 4, 0.3, 0.9, 0.0, 0.0],  # kept with obj * cls = 0.27, not cls = 0.9
            [0, 0, 8, 8, 0.5, 0.0, 0.0, 0.75],  # kept: class 2, score 0.375
        ],
        dtype=np.float32,
    )
    boxes, scores, class_ids = decode_raw_predictions(pred, conf=0.25)
    np.testing.assert_allclose(boxes, [[8, 17, 12, 23], [29, 29, 31, 31], [6, 7, 8, 11], [-4, -4, 4, 4]])
    expected_scores = [np.float32(0.9) * np.float32(0.8), 0.6, np.float32(0.3) * np.float32(0.9), 0.375]
    np.testing.assert_array_equal(scores, np.asarray(expected_scores, dtype=np.float32))
    np.testing.assert_array_equal(class_ids, [1, 0, 0, 2])
    assert (boxes.dtype, scores.dtype, class_ids.dtype) == (np.float32, np.float32, np.int64)


def test_decode_raw_predictions_multi_label_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    pred = np.concatenate(
        [rng.uniform(0, 100, (40, 2)), rng.uniform(1, 20, (40, 2)), rng.uniform(0, 1, (40, 6))], axis=1
    ).astype(np.float32)
    boxes, scores, class_ids = decode_raw_predictions(pred, conf=0.2, multi_label=True)
    expected = [
        (row[0] - row[2] / 2, row[1] - row[3] / 2, row[0] + row[2] / 2, row[1] + row[3] / 2, row[4] * p, c)
        for row in pred
        if row[4] > 0.2
        for c, p in enumerate(row[5:])
        if row[4] * p > 0.2
    ]
    got = [(*b, s, c) for b, s, c in zip(boxes.tolist(), scores.tolist(), class_ids.tolist(), strict=True)]
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64), rtol=1e-6)
    assert len(set(map(tuple, boxes.tolist()))) < len(boxes)  # some boxes carry several classes
    # the best-class candidates are a subset: one row per box, its highest score
    single = decode_raw_predictions(pred, conf=0.2)
    assert len(single[0]) < len(boxes)
    assert set(zip(single[1].tolist(), single[2].tolist(), strict=True)) <= set(
        zip(scores.tolist(), class_ids.tolist(), strict=True)
    )


def test_decode_raw_predictions_single_class_and_empty() -> None:
    pred = np.array([[10, 10, 2, 2, 0.8, 0.5], [10, 10, 2, 2, 0.8, 0.25]], dtype=np.float32)
    boxes, scores, class_ids = decode_raw_predictions(pred, conf=0.3)
    np.testing.assert_array_equal(boxes, [[9, 9, 11, 11]])
    np.testing.assert_array_equal(scores, [np.float32(0.8) * np.float32(0.5)])
    np.testing.assert_array_equal(class_ids, [0])
    boxes, scores, class_ids = decode_raw_predictions(np.zeros((0, 85), dtype=np.float32), conf=0.3)
    assert (boxes.shape, scores.shape, class_ids.shape) == ((0, 4), (0,), (0,))


@pytest.mark.parametrize("shape", [(10, 5), (85,), (2, 3, 85)])
def test_decode_raw_predictions_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="5 \\+ nc"):
        decode_raw_predictions(np.zeros(shape, dtype=np.float32), conf=0.25)


def reference_ios(a: list[float], b: list[float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min(
        max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]), max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    )
    return inter_w * inter_h / smaller if smaller > 0 else 0.0


def reference_merge(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, mode: str, threshold: float, agnostic: bool
) -> list[tuple[list[float], float, int]]:
    """Greedy merging in plain Python: the best remaining box takes its IoS matches among the rest."""
    box_list = boxes.tolist()
    remaining = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    out = []
    while remaining:
        best, rest = remaining[0], remaining[1:]
        same = [j for j in rest if agnostic or class_ids[j] == class_ids[best]]
        matches = [j for j in same if reference_ios(box_list[best], box_list[j]) > threshold]
        box = box_list[best]
        if mode == "nmm":
            group = [box_list[k] for k in [best, *matches]]
            box = [
                min(g[0] for g in group),
                min(g[1] for g in group),
                max(g[2] for g in group),
                max(g[3] for g in group),
            ]
        out.append((box, float(scores[best]), int(class_ids[best])))
        remaining = [j for j in rest if j not in matches]
    return out


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("mode", ["nms", "nmm"])
def test_merge_detections_matches_reference(seed: int, mode: str) -> None:
    boxes, scores, class_ids = random_case(seed)
    agnostic, threshold = seed % 3 == 0, (0.3, 0.5, 0.8)[seed % 3]
    merged = merge_detections(
        Detections(boxes, scores, class_ids), mode=mode, threshold=threshold, agnostic=agnostic
    )
    expected = reference_merge(boxes, scores, class_ids, mode, threshold, agnostic)
    assert len(merged) == len(expected)
    assert merged.scores.tolist() == pytest.approx([s for _, s, _ in expected])
    assert merged.class_ids.tolist() == [c for _, _, c in expected]
    np.testing.assert_allclose(
        merged.boxes, np.asarray([b for b, _, _ in expected]).reshape(-1, 4), atol=1e-4
    )


def test_merge_joins_a_box_cut_by_a_slice_edge() -> None:
    whole = [100, 100, 140, 130]
    cut = [120, 100, 140, 130]  # the right half seen by the next slice: IoU 0.5, IoS 1
    other_class = [100, 100, 140, 130]
    dets = Detections(
        np.asarray([whole, cut, other_class], np.float32),
        np.asarray([0.9, 0.95, 0.8], np.float32),
        np.asarray([0, 0, 1], np.int64),
    )
    nms_kept = merge_detections(dets, mode="nms", threshold=0.5)
    assert nms_kept.boxes.tolist() == [cut, other_class]  # the best score wins; other classes stay
    nmm_kept = merge_detections(dets, mode="nmm", threshold=0.5)
    assert nmm_kept.boxes.tolist() == [whole, other_class] and nmm_kept.scores.tolist() == pytest.approx(
        [0.95, 0.8]
    )
    assert len(merge_detections(dets, mode="nms", threshold=0.5, agnostic=True)) == 1
