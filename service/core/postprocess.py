"""Post-processing of one backend output row: the head's candidates above `conf`, class filter and
NMS (`service.processing`), boxes back to original-image pixels through the letterbox's exact
inverse, a window's offset added; and a sliced image's passes merged into one answer. Runs in the
batch's worker thread right after its batch (merging: in the decode pool).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.core.metrics import ModelMetrics
from service.core.options import DetectParams
from service.core.tiling import MATCH_IOS
from service.processing import (
    Detections,
    Head,
    Letterbox,
    head_layout,
    merge_detections,
    scale_boxes,
    select_detections,
)


@dataclass(frozen=True)
class Postprocessed:
    detections: Detections  # original-image pixels
    seconds: float
    began: float = 0.0  # time.monotonic() (a span's start, when traced)


class Postprocessor:
    """For one backend's head (what it answers: top-K rows or raw rows)."""

    def __init__(self, head: Head, metrics: ModelMetrics) -> None:
        self._head, self._metrics = head_layout(head), metrics

    def detections(self, output: np.ndarray, lb: Letterbox, params: DetectParams) -> Detections:
        """One image's backend output -> thresholded, NMS'd detections in original pixels."""
        boxes, scores, class_ids = self._head.candidates(output, params.conf)
        kept = select_detections(
            boxes,
            scores,
            class_ids,
            conf=params.conf,
            iou=params.iou,
            max_det=params.max_det,
            classes=params.classes,
            agnostic=params.agnostic,
        )
        return Detections(scale_boxes(kept.boxes, lb), kept.scores, kept.class_ids)

    def finish(
        self, output: np.ndarray, *, lb: Letterbox, params: DetectParams, offset: tuple[int, int] = (0, 0)
    ) -> Postprocessed:
        """Batch worker thread: `detections`, timed; boxes moved by a window's `offset`."""
        start = time.monotonic()
        detections = self.detections(output, lb, params)
        if offset != (0, 0):
            shift = np.asarray(offset * 2, dtype=np.float32)
            detections = Detections(detections.boxes + shift, detections.scores, detections.class_ids)
        seconds = time.monotonic() - start
        self._metrics.postprocess.observe(seconds)
        return Postprocessed(detections, seconds, start)

    @staticmethod
    def merge(parts: list[Detections], params: DetectParams) -> Postprocessed:
        """One sliced image's detections from all its passes, merged, the best `max_det`."""
        start = time.monotonic()
        pooled = Detections(
            np.concatenate([d.boxes for d in parts]),
            np.concatenate([d.scores for d in parts]),
            np.concatenate([d.class_ids for d in parts]),
        )
        mode, agnostic = params.tile.merge, params.agnostic
        merged = merge_detections(pooled, mode=mode, threshold=MATCH_IOS, agnostic=agnostic)
        best = slice(0, params.max_det)
        detections = Detections(merged.boxes[best], merged.scores[best], merged.class_ids[best])
        return Postprocessed(detections, time.monotonic() - start, start)
