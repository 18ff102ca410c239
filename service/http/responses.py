"""Detections as the HTTP answers give them: boxes rounded to 0.01 px, scores to 1e-5, class names
(a detect request's JSON answer; a video frame's NDJSON line and the stream's summary)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.detector import Detector, DetectOutcome
from service.core.results import Detection, DetectResponse, ImageResult, ModelSummary, Timing
from service.core.video import VideoClip
from service.core.video_detection import FrameDetections
from service.processing import Detections


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


def detections_json(detections: Detections, names: list[str]) -> list[dict[str, Any]]:
    """Each detection as `{box, score, class_id, class_name}`, rounded."""
    boxes = np.round(detections.boxes.astype(np.float64), 2).tolist()
    scores = np.round(detections.scores.astype(np.float64), 5).tolist()
    return [
        {"box": b, "score": s, "class_id": c, "class_name": _name(names, c)}
        for b, s, c in zip(boxes, scores, detections.class_ids.tolist(), strict=True)
    ]


def frame_json(frame: FrameDetections, names: list[str]) -> dict[str, Any]:
    """One NDJSON line of `POST /detect/video`."""
    pts = None if frame.pts_s is None else round(frame.pts_s, 6)
    return {
        "frame": frame.frame,
        "pts_s": pts,
        "width": frame.width,
        "height": frame.height,
        "detections": detections_json(frame.detections, names),
    }


def video_summary(clip: VideoClip, processed: int, seconds: float) -> dict[str, Any]:
    """The last NDJSON line's `summary`: frames read and processed, the processing rate, the clip."""
    info = clip.info
    return {
        "frames_read": clip.read,
        "frames_processed": processed,
        "seconds": round(seconds, 3),
        "fps": round(processed / seconds, 2) if seconds > 0 else None,
        "video": {
            "container": info.container,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "fps": None if info.fps is None else round(info.fps, 3),
            "duration_s": None if info.duration_s is None else round(info.duration_s, 3),
            "frames": info.frames,
        },
    }


def _name(names: list[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)
