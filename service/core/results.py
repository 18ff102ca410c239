"""What a detect request answers, whatever the transport turns it into: per image its size and
detections (boxes in original-image pixels), the model, and where the time went (pydantic models:
the HTTP routes return them as they are, and /docs shows them)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
