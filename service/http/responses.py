"""A detect outcome as the HTTP answer (the detections as `service.core.results` rounds them)."""

from __future__ import annotations

from service.core.detector import DetectOutcome
from service.core.model import LoadedModel
from service.core.results import Detection, DetectResponse, ImageResult, ModelSummary, Timing, detections_json


def detect_response(model: LoadedModel, outcome: DetectOutcome) -> DetectResponse:
    """`outcome` of a request that held `model`."""
    names = model.manifest.class_names
    results = []
    for image in outcome.images:
        detections = [Detection(**d) for d in detections_json(image.detections, names)]
        results.append(
            ImageResult(width=image.width, height=image.height, detections=detections, tiles=image.tiles)
        )
    summary = ModelSummary(
        name=model.name,
        version=model.version,
        arch=model.manifest.arch,
        backend=model.backend.name,
        precision=model.backend.precision,
        input_size=model.manifest.input_size,
    )
    return DetectResponse(model=summary, results=results, timing_ms=Timing(**outcome.timing_ms))
