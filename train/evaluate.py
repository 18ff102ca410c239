"""COCO-style detection mAP with faster-coco-eval, from in-memory arrays (no files written).

Boxes are (N, 4) xyxy in pixels of the image being evaluated (usually the original image: map
letterboxed predictions back with ``service.processing.scale_boxes`` first). Class ids are
``0 .. num_classes-1``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

# boxes (N, 4) xyxy, class ids (N,)[, crowd boxes (K, 4), crowd class ids (K,)]
GroundTruth = tuple[npt.ArrayLike, ...]
Prediction = tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]  # boxes (K, 4), scores (K,), class ids (K,)


def _rows(boxes: npt.ArrayLike, *columns: npt.ArrayLike, what: str, index: int) -> list[np.ndarray]:
    xyxy = np.asarray(boxes, np.float64).reshape(-1, 4)
    values = [np.asarray(c).reshape(-1) for c in columns]
    if any(len(v) != len(xyxy) for v in values):
        raise ValueError(f"{what}[{index}]: {len(xyxy)} boxes but {[len(v) for v in values]} other values")
    xywh = np.column_stack((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]))
    return [xywh, *values]


def ground_truth(
    boxes: npt.ArrayLike, classes: npt.ArrayLike, crowd: tuple[npt.ArrayLike, npt.ArrayLike] | None = None
) -> GroundTruth:
    """One image's ground truth for :func:`coco_map`, with its COCO crowd regions if any."""
    return (boxes, classes) if crowd is None else (boxes, classes, *crowd)


def _coco_dicts(
    ground_truth: Sequence[GroundTruth], predictions: Sequence[Prediction], num_classes: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gt_anns: list[dict[str, Any]] = []
    dt_anns: list[dict[str, Any]] = []
    for image, labels in enumerate(ground_truth):
        if len(labels) not in (2, 4):
            raise ValueError(f"ground_truth[{image}]: expected (boxes, classes[, crowd boxes, classes])")
        for crowd, (boxes, classes) in enumerate((labels[:2], labels[2:]) if len(labels) == 4 else (labels,)):
            xywh, cls = _rows(boxes, classes, what="ground_truth", index=image)
            for box, c in zip(xywh.tolist(), cls.tolist(), strict=True):
                if not 0 <= c < num_classes:
                    raise ValueError(f"ground_truth[{image}]: class id {c} outside 0..{num_classes - 1}")
                # ids start at 1: faster-coco-eval uses id 0 as its "unmatched" marker
                gt_anns.append(
                    {"id": len(gt_anns) + 1, "image_id": image + 1, "category_id": int(c) + 1, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": crowd}
                )  # fmt: skip
    for image, (boxes, scores, classes) in enumerate(predictions):
        xywh, score, cls = _rows(boxes, scores, classes, what="predictions", index=image)
        for box, s, c in zip(xywh.tolist(), score.tolist(), cls.tolist(), strict=True):
            dt_anns.append({"image_id": image + 1, "category_id": int(c) + 1, "bbox": box, "score": float(s)})
    gt = {
        "images": [{"id": i + 1} for i in range(len(ground_truth))],
        "annotations": gt_anns,
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
    }
    return gt, dt_anns


def coco_map(
    ground_truth: Sequence[GroundTruth],
    predictions: Sequence[Prediction],
    num_classes: int,
    max_detections: int = 100,
) -> dict[str, Any]:
    """COCO bbox mAP: ``{"map50", "map50_95", "per_class_ap50", "per_class_ap50_95", "gt_per_class"}``.

    ``ground_truth[i]`` is (boxes (N, 4) xyxy, class ids (N,)) of image i, optionally followed by
    its crowd regions (boxes (K, 4), class ids (K,)): detections matching those are ignored.
    ``predictions[i]`` is (boxes (K, 4) xyxy, scores (K,), class ids (K,)) of the same image (same
    length, either may be empty). Standard COCO rules: 101-point interpolated precision, IoU
    thresholds 0.50:0.05:0.95, area range "all", at most ``max_detections`` per image (highest
    scores kept).

    A class without ground truth has no defined AP: it is left out of the means (as COCO does) and
    reported as 0.0 in the per-class lists (check ``gt_per_class``). When no class has ground truth
    there is nothing to evaluate and every value is 0.0 (never NaN or COCO's -1).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(predictions)} prediction images")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    gt_dict, dt_anns = _coco_dicts(ground_truth, predictions, num_classes)
    gt_per_class = np.bincount(
        [a["category_id"] - 1 for a in gt_dict["annotations"] if not a["iscrowd"]], minlength=num_classes
    ).tolist()
    zeros = [0.0] * num_classes
    result: dict[str, Any] = {
        "map50": 0.0, "map50_95": 0.0, "per_class_ap50": zeros, "per_class_ap50_95": list(zeros),
        "gt_per_class": gt_per_class,
    }  # fmt: skip
    if not any(gt_per_class):
        return result
    coco_gt = COCO(gt_dict)
    coco_dt = coco_gt.loadRes(dt_anns)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=log.debug)
    evaluator.params.maxDets = [max_detections]
    evaluator.evaluate()
    evaluator.accumulate()
    # precision: [iou threshold, recall point, class, area range, max dets]; -1 marks "no ground truth"
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]
    per_class_50_95 = _mean_valid(precision, axis=(0, 1))
    per_class_50 = _mean_valid(precision[:1], axis=(0, 1))
    has_gt = np.asarray(gt_per_class) > 0
    result["map50"] = float(per_class_50[has_gt].mean())
    result["map50_95"] = float(per_class_50_95[has_gt].mean())
    result["per_class_ap50"] = np.where(has_gt, per_class_50, 0.0).tolist()
    result["per_class_ap50_95"] = np.where(has_gt, per_class_50_95, 0.0).tolist()
    return result


def _mean_valid(values: np.ndarray, axis: tuple[int, ...]) -> npt.NDArray[np.float64]:
    valid = values > -1
    total = np.where(valid, values, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    return np.divide(total, count, out=np.zeros_like(total, dtype=np.float64), where=count > 0)
