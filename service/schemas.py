"""The HTTP API contract: request and response bodies (pydantic), shown at /docs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service.manifest import ModelManifest

# The post-processing parameters' bounds, for JSON bodies (Field) and query strings (Query) alike.
CONF_BOUNDS: dict[str, Any] = {"ge": 0.0, "le": 1.0, "description": "keep detections with score > conf"}
IOU_BOUNDS: dict[str, Any] = {"ge": 0.0, "le": 1.0, "description": "NMS IoU threshold"}
MAX_DET_BOUNDS: dict[str, Any] = {"ge": 1, "le": 10_000, "description": "most detections per image"}

Conf = Annotated[float, Field(**CONF_BOUNDS)]
Iou = Annotated[float, Field(**IOU_BOUNDS)]
MaxDet = Annotated[int, Field(**MAX_DET_BOUNDS)]

DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET = 0.25, 0.45, 300


class Detection(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in original-image pixels")
    score: float
    class_id: int
    class_name: str


class ImageResult(BaseModel):
    width: int
    height: int
    detections: list[Detection]


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


class JsonDetectRequest(BaseModel):
    """`POST /detect/json`: base64 images (a `data:` URL prefix is accepted) and the same parameters."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1, description="base64-encoded image files")
    conf: Conf = DEFAULT_CONF
    iou: Iou = DEFAULT_IOU
    max_det: MaxDet = DEFAULT_MAX_DET
    classes: list[int | str] | None = Field(None, description="class ids or names to keep (default: all)")
    agnostic: bool = False


class ModelInfo(ModelManifest):
    """`GET /model`: the manifest plus how it is served."""

    backend: str
    precision: str
    device: str
    max_batch_size: int
    max_delay_ms: float
    sample_image: str | None = Field(
        None, description="URL path of an image the model detects things in (GET /model/sample); null: none"
    )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Status(BaseModel):
    status: str
