"""A detect outcome as the HTTP answer: boxes rounded to 0.01 px, scores to 1e-5, class names."""

from __future__ import annotations

import numpy as np

from service.core.detector import Detector, DetectOutcome
from service.core.results import Detection, DetectResponse, ImageResult, ModelSummary, Timing


def detect_response(detector: Detector, outcome: DetectOutcome) -> DetectResponse:
    """`outcome` of a request that held `detector`'s model."""
    names = detector.manifest.class_names
    results = []
    for image in outcome.images:
        det = image.detections
        boxes = np.round(det.boxes.astype(np.float64), 2).tolist()
        scores = np.round(det.scores.astype(np.float64), 5).tolist()
        ids = det.class_ids.tolist()
        detections = [
            Detection(
                box=tuple(b), score=s, class_id=c, class_name=names[c] if 0 <= c < len(names) else str(c)
            )
            for b, s, c in zip(boxes, scores, ids, strict=True)
        ]
        results.append(
            ImageResult(width=image.width, height=image.height, detections=detections, tiles=image.tiles)
        )
    model = ModelSummary(
        arch=detector.manifest.arch,
        backend=detector.backend.name,
        precision=detector.backend.precision,
        input_size=detector.manifest.input_size,
    )
    return DetectResponse(model=model, results=results, timing_ms=Timing(**outcome.timing_ms))


def _name(names: list[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)
