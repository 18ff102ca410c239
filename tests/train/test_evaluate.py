"""COCO mAP from arrays: perfect, shifted, wrong-class, hand-computed and empty cases."""

from __future__ import annotations

import numpy as np
import pytest

from train.evaluate import coco_map

pytestmark = pytest.mark.unit

EMPTY_GT = (np.zeros((0, 4)), np.zeros(0, np.int64))
EMPTY_PRED = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))


def scene(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(5):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, size=(n, 2))
        wh = rng.uniform(10, 80, size=(n, 2))
        images.append((np.concatenate([xy, xy + wh], axis=1), rng.integers(0, 3, size=n)))
    return images


def as_predictions(gt: list[tuple[np.ndarray, np.ndarray]], shift: float = 0.0) -> list[tuple]:
    return [(boxes + shift, np.linspace(0.9, 0.5, len(boxes)), classes) for boxes, classes in gt]


def test_perfect_predictions_score_one() -> None:
    gt = scene(0)
    result = coco_map(gt, as_predictions(gt), num_classes=4)
    assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(1.0)
    counts = np.bincount(np.concatenate([c for _, c in gt]), minlength=4)
    assert result["gt_per_class"] == counts.tolist() and counts[3] == 0
    assert result["per_class_ap50"] == pytest.approx([1.0, 1.0, 1.0, 0.0])  # class 3: no ground truth


def test_shifted_predictions_score_lower_and_match_a_hand_computed_value() -> None:
    gt = [(np.asarray([[10, 10, 50, 50]]), np.asarray([0]))]
    # IoU of a 40 px box shifted by 4 px in x and y: 36^2 / (2 * 40^2 - 36^2) = 0.68 -> matched at
    # thresholds 0.50, 0.55, 0.60, 0.65 of the ten
    result = coco_map(gt, as_predictions(gt, shift=4.0), num_classes=1)
    assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(0.4)
    scene_gt = scene(1)
    shifted = coco_map(scene_gt, as_predictions(scene_gt, shift=6.0), num_classes=3)
    assert 0 < shifted["map50_95"] < 0.9


def test_precision_recall_curve_interpolation() -> None:
    gt = [(np.asarray([[0, 0, 10, 10], [20, 20, 30, 30]]), np.asarray([0, 0]))]
    boxes = np.asarray([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]])
    result = coco_map(gt, [(boxes, np.asarray([0.9, 0.8, 0.7]), np.zeros(3, np.int64))], num_classes=1)
    # TP, FP, TP: precision 1 up to recall 0.5, then 2/3 up to recall 1, on COCO's 101 recall points
    assert result["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_swapped_classes_score_zero() -> None:
    gt = [(np.asarray([[0, 0, 10, 10], [20, 20, 40, 40]]), np.asarray([0, 1]))]
    swapped = [(gt[0][0], np.asarray([0.9, 0.8]), np.asarray([1, 0]))]
    result = coco_map(gt, swapped, num_classes=2)
    assert result["map50"] == 0.0 and result["map50_95"] == 0.0


def test_empty_cases_give_zero_not_nan() -> None:
    nothing = coco_map([EMPTY_GT, EMPTY_GT], [EMPTY_PRED, EMPTY_PRED], num_classes=2)
    only_predictions = coco_map([EMPTY_GT], [(np.asarray([[0, 0, 5, 5]]), [0.9], [1])], num_classes=2)
    only_ground_truth = coco_map(scene(2), [EMPTY_PRED] * 5, num_classes=3)
    for result in (nothing, only_predictions, only_ground_truth):
        assert result["map50"] == 0.0 and result["map50_95"] == 0.0
        assert not np.isnan(result["per_class_ap50"]).any()
    assert coco_map([], [], num_classes=1)["map50"] == 0.0


def test_images_without_ground_truth_count_their_false_positives() -> None:
    gt = [(np.asarray([[0, 0, 10, 10]]), np.asarray([0])), EMPTY_GT]
    predictions = [
        (np.asarray([[0, 0, 10, 10]]), np.asarray([0.5]), np.asarray([0])),
        (np.asarray([[0, 0, 10, 10]]), np.asarray([0.9]), np.asarray([0])),  # a confident false positive
    ]
    # FP then TP: precision 0.5 at every recall point
    assert coco_map(gt, predictions, num_classes=1)["map50"] == pytest.approx(0.5)


def test_detections_on_crowd_regions_are_ignored_not_false_positives() -> None:
    gt_boxes, gt_classes = np.asarray([[10, 10, 50, 50]]), np.asarray([0])
    crowd = (np.asarray([[100, 100, 200, 200]]), np.asarray([0]))
    # the true box scores below a detection inside the crowd region
    pred = (np.asarray([[120, 120, 180, 180], [10, 10, 50, 50]]), np.asarray([0.9, 0.8]), np.asarray([0, 0]))
    plain = coco_map([(gt_boxes, gt_classes)], [pred], num_classes=1)
    with_crowd = coco_map([(gt_boxes, gt_classes, *crowd)], [pred], num_classes=1)
    assert plain["map50"] == pytest.approx(0.5, abs=0.01)  # a false positive ranked first
    assert with_crowd["map50"] == pytest.approx(1.0)  # ignored: as if it were not there
    assert with_crowd["gt_per_class"] == [1]  # crowd regions are not objects to find
    # an image whose only labels are crowd regions has nothing to find
    only_crowd = coco_map([(*EMPTY_GT, *crowd)], [pred], num_classes=1)
    assert only_crowd["map50"] == 0.0 and only_crowd["gt_per_class"] == [0]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="1 ground-truth images but 2"):
        coco_map([EMPTY_GT], [EMPTY_PRED, EMPTY_PRED], num_classes=1)
    with pytest.raises(ValueError, match="class id 5 outside"):
        coco_map([(np.asarray([[0, 0, 1, 1]]), np.asarray([5]))], [EMPTY_PRED], num_classes=2)
    with pytest.raises(ValueError, match="predictions\\[0\\]: 1 boxes"):
        coco_map([EMPTY_GT], [(np.asarray([[0, 0, 1, 1]]), np.asarray([0.5, 0.4]), np.asarray([0]))], 1)
