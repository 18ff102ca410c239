"""What a detect request answers, whatever the transport turns it into: per image its size and
detections (boxes in original-image pixels), the model, and where the time went (pydantic models:
the HTTP routes return them as they are, and /docs shows them); and the same as plain JSON values
for the streams and files (a video frame's line, a video's summary: `POST /detect/video`,
`yolor predict`). Boxes are rounded to 0.01 px and scores to 1e-5 everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from service.processing import Detections

if TYPE_CHECKING:  # the image answers' writers import without PyAV or the batcher (bench/peers)
    from service.core.video import VideoClip
    from service.core.video_detection import FrameDetections, TrackBook


class Detection(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in original-image pixels")
    score: float
    class_id: int
    class_name: str


class ImageResult(BaseModel):
    width: int
    height: int
    detections: list[Detection]
    tiles: int = Field(0, description="windows the image was sliced into (0: not tiled; `tile`)")


class ModelSummary(BaseModel):
    name: str = Field(description="the model that answered (its name in the repository)")
    version: int = Field(description="and its version")
    arch: str
    backend: str
    precision: str
    input_size: int


class Timing(BaseModel):
    preprocess: float = Field(description="decode + letterbox, all images (ms)")
    queue: float = Field(description="longest wait in the batch queue (ms)")
    inference: float = Field(description="longest backend call among the request's batches (ms)")
    postprocess: float = Field(description="threshold + NMS + box scaling, all images (ms)")
    total: float


class DetectResponse(BaseModel):
    model: ModelSummary
    results: list[ImageResult] = Field(description="one per image, in request order")
    timing_ms: Timing


def detections_json(detections: Detections, names: list[str]) -> list[dict[str, Any]]:
    """Each detection as `{box, score, class_id, class_name}`, rounded."""
    boxes = np.round(detections.boxes.astype(np.float64), 2).tolist()
    scores = np.round(detections.scores.astype(np.float64), 5).tolist()
    return [
        {"box": b, "score": s, "class_id": c, "class_name": class_name(names, c)}
        for b, s, c in zip(boxes, scores, detections.class_ids.tolist(), strict=True)
    ]


def tracked_detections_json(
    detections: Detections, track_ids: npt.NDArray[np.int64] | None, names: list[str]
) -> list[dict[str, Any]]:
    """`detections_json`, with tracking each detection's `track_id` (null: not on a confirmed track)."""
    items = detections_json(detections, names)
    if track_ids is not None:
        for item, track_id in zip(items, track_ids.tolist(), strict=True):
            item["track_id"] = track_id if track_id >= 0 else None
    return items


def frame_json(frame: FrameDetections, names: list[str]) -> dict[str, Any]:
    """One NDJSON line of `POST /detect/video`."""
    pts = None if frame.pts_s is None else round(frame.pts_s, 6)
    detections = tracked_detections_json(frame.detections, frame.track_ids, names)
    return {
        "frame": frame.frame,
        "pts_s": pts,
        "width": frame.width,
        "height": frame.height,
        "detections": detections,
    }


def video_summary(
    clip: VideoClip, processed: int, seconds: float, names: list[str], book: TrackBook | None = None
) -> dict[str, Any]:
    """The last NDJSON line's `summary`: frames read and processed, the processing rate, the clip,
    and with tracking every track (its class, first and last frame, frames seen)."""
    info = clip.info
    tracks = None
    if book is not None:
        tracks = [
            {
                "track_id": track_id,
                "class_id": r.class_id,
                "class_name": class_name(names, r.class_id),
                "first_frame": r.first_frame,
                "last_frame": r.last_frame,
                "frames": r.frames,
            }
            for track_id, r in sorted(book.tracks.items())
        ]
    summary: dict[str, Any] = {
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
    if tracks is not None:
        summary["tracks"] = tracks
    return summary


def class_name(names: list[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)
