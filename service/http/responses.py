"""A detect outcome as the HTTP answer (the detections as `service.core.results` rounds them)."""

from __future__ import annotations

from service.core.detector import Detector, DetectOutcome
from service.core.results import Detection, DetectResponse, ImageResult, ModelSummary, Timing, detections_json


def detect_response(detector: Detector, outcome: DetectOutcome) -> DetectResponse:
    """`outcome` of a request that held `detector`'s model."""
    names = detector.manifest.class_names
    results = []
    for image in outcome.images:
        detections = [Detection(**d) for d in detections_json(image.detections, names)]
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
