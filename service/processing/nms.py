"""Greedy non-maximum suppression and YOLOR host post-processing in pure numpy.

Boxes are ``(N, 4)`` xyxy in pixels, scores ``(N,)``, class ids ``(N,)`` integers. Ties in score
are broken by input order (stable sort of ``-scores``), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from service.processing.boxes import as_boxes, box_ios, box_iou, xywh_to_xyxy

IndexArray = npt.NDArray[np.int64]
MergeMode = Literal["nms", "nmm"]
MERGE_MODES: tuple[MergeMode, ...] = get_args(MergeMode)


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one image, sorted by descending score.

    ``boxes``: ``(N, 4)`` float32 xyxy pixels; ``scores``: ``(N,)`` float32; ``class_ids``: ``(N,)`` int64.
    """

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _as_vector(values: npt.ArrayLike, length: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {array.shape}")
    return array


def _descending_order(scores: np.ndarray) -> IndexArray:
    """Indices sorting ``scores`` descending; equal scores keep input order."""
    return np.argsort(-scores.astype(np.float64), kind="stable").astype(np.int64)


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float) -> IndexArray:
    """Greedy NMS: indices (int64) of the kept boxes, ordered by descending score.

    ``boxes``: ``(N, 4)`` xyxy; ``scores``: ``(N,)``. A box is suppressed when its IoU with a
    higher-scored kept box is strictly greater than ``iou_threshold`` (as torchvision does).
    """
    xyxy = as_boxes(boxes).astype(np.float64, copy=False)
    score_values = _as_vector(scores, xyxy.shape[0], "scores")
    remaining = _descending_order(score_values)
    kept: list[int] = []
    while remaining.size > 0:
        best = int(remaining[0])
        kept.append(best)
        rest = remaining[1:]
        if rest.size == 0:
            break
        ious = box_iou(xyxy[best : best + 1], xyxy[rest])[0]
        remaining = rest[ious <= iou_threshold]
    return np.asarray(kept, dtype=np.int64)


def batched_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    class_ids: npt.ArrayLike,
    iou_threshold: float,
    agnostic: bool = False,
) -> IndexArray:
    """Class-aware NMS: boxes only suppress boxes of the same class (all boxes if ``agnostic``).

    Runs :func:`nms` on each class separately (no coordinate-offset trick) and merges the kept
    indices (int64) by descending score, equal scores in input order.
    """
    xyxy = as_boxes(boxes)
    score_values = _as_vector(scores, xyxy.shape[0], "scores")
    classes = _as_vector(class_ids, xyxy.shape[0], "class_ids")
    if agnostic:
        return nms(xyxy, score_values, iou_threshold)
    kept_parts = [np.zeros(0, dtype=np.int64)]
    for members in _class_groups(classes, agnostic=False):
        kept_parts.append(members[nms(xyxy[members], score_values[members], iou_threshold)])
    kept = np.sort(np.concatenate(kept_parts))
    return kept[_descending_order(score_values[kept])]


def _class_groups(class_ids: np.ndarray, agnostic: bool) -> list[IndexArray]:
    if agnostic:
        return [np.arange(class_ids.shape[0], dtype=np.int64)]
    return [np.flatnonzero(class_ids == c).astype(np.int64) for c in np.unique(class_ids)]


def merge_detections(
    detections: Detections, *, mode: MergeMode, threshold: float, agnostic: bool = False
) -> Detections:
    """Merge the detections of overlapping views of one image (the slices of sliced inference).

    Greedy by score within a class (across classes if ``agnostic``): the best remaining box takes
    every remaining box whose intersection over the smaller box (:func:`box_ios`) exceeds
    ``threshold`` -- a box cut by a slice edge lies inside the whole object's box whatever its IoU.
    ``mode`` ``"nms"`` keeps the best box and drops its matches; ``"nmm"`` (SAHI's GREEDYNMM) grows
    the best box to the union of its matches, keeping its score and class. Returns the kept
    detections sorted by descending score (equal scores in input order).
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"mode must be one of {MERGE_MODES}, got {mode!r}")
    boxes = detections.boxes.astype(np.float32, copy=True)
    scores, class_ids = detections.scores, detections.class_ids
    kept: list[int] = []
    for members in _class_groups(class_ids, agnostic):
        remaining = members[_descending_order(scores[members])]
        while remaining.size > 0:
            best, rest = int(remaining[0]), remaining[1:]
            matches = box_ios(detections.boxes[best : best + 1], detections.boxes[rest])[0] > threshold
            if mode == "nmm" and matches.any():
                group = detections.boxes[np.concatenate(([best], rest[matches]))]
                boxes[best] = (*group[:, :2].min(axis=0), *group[:, 2:].max(axis=0))
            kept.append(best)
            remaining = rest[~matches]
    order = np.asarray(sorted(kept), dtype=np.int64)
    order = order[_descending_order(scores[order])]
    return Detections(boxes=boxes[order], scores=scores[order], class_ids=class_ids[order])


def _validate_thresholds(conf: float, iou: float, max_det: int) -> None:
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf must be in [0, 1], got {conf}")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou must be in [0, 1], got {iou}")
    if isinstance(max_det, bool) or not isinstance(max_det, int | np.integer) or max_det < 1:
        raise ValueError(f"max_det must be an int >= 1, got {max_det!r}")


def select_detections(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    class_ids: npt.ArrayLike,
    *,
    conf: float,
    iou: float,
    max_det: int,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
) -> Detections:
    """Host post-processing of one image's candidates (one ``(box, score, class)`` per row).

    ``boxes``: ``(N, 4)`` xyxy; ``scores``: ``(N,)``; ``class_ids``: ``(N,)`` integers. Keeps
    ``score > conf``, then only ``classes`` (None or empty: all), applies :func:`batched_nms` with
    ``iou``, sorts by descending score and keeps at most ``max_det``.
    Raises ValueError unless ``0 <= conf <= 1``, ``0 <= iou <= 1`` and ``max_det >= 1``.
    """
    _validate_thresholds(conf, iou, max_det)
    xyxy = as_boxes(boxes).astype(np.float32, copy=False)
    score_values = _as_vector(scores, xyxy.shape[0], "scores").astype(np.float32, copy=False)
    class_values = _as_vector(class_ids, xyxy.shape[0], "class_ids").astype(np.int64, copy=False)
    candidates = score_values > conf
    if classes:
        candidates &= np.isin(class_values, np.asarray(classes, dtype=np.int64))
    xyxy, score_values, class_values = xyxy[candidates], score_values[candidates], class_values[candidates]
    kept = batched_nms(xyxy, score_values, class_values, iou, agnostic=agnostic)[:max_det]
    return Detections(boxes=xyxy[kept], scores=score_values[kept], class_ids=class_values[kept])


def decode_raw_predictions(
    pred: npt.ArrayLike, conf: float, *, multi_label: bool = False
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Decode one image's raw YOLOR head output into candidates, as official YOLOR NMS does.

    ``pred``: ``(N, 5 + nc)`` rows ``[cx, cy, w, h, obj, cls_0 .. cls_{nc-1}]`` (already sigmoid,
    ``nc >= 1``). Rows with ``obj > conf`` are candidates; ``score = obj * cls`` of the best class
    (first on ties), kept when ``score > conf``. ``multi_label=True`` (official ``test.py``) keeps
    every class with ``score > conf`` instead, one candidate each, ordered by row then class.
    Returns ``(boxes, scores, class_ids)``: ``(K, 4)`` float32 xyxy, ``(K,)`` float32, ``(K,)``
    int64, in input row order.
    """
    rows = np.asarray(pred)
    if rows.ndim != 2 or rows.shape[1] < 6:
        raise ValueError(f"pred must have shape (N, 5 + nc) with nc >= 1, got {rows.shape}")
    rows = rows.astype(np.float32, copy=False)
    rows = rows[rows[:, 4] > conf]
    class_scores = rows[:, 5:] * rows[:, 4:5]
    if multi_label:
        row, cls = np.nonzero(class_scores > conf)
        boxes = xywh_to_xyxy(rows[row, :4]).astype(np.float32, copy=False)
        return boxes, class_scores[row, cls], cls.astype(np.int64)
    best_class = np.argmax(class_scores, axis=1)
    best_score = np.take_along_axis(class_scores, best_class[:, None], axis=1)[:, 0]
    keep = best_score > conf
    boxes = xywh_to_xyxy(rows[keep, :4]).astype(np.float32, copy=False)
    return boxes, best_score[keep], best_class[keep].astype(np.int64)
