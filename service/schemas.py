"""The HTTP API contract: request and response bodies (pydantic), shown at /docs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.manifest import ModelManifest
from service.options import TILE_BOUNDS, DetectFields
from service.tiling import TILE_WORDS


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


class DetectQuery(DetectFields):
    """The query string of `POST /detect` and `/detect/annotated` (`service.api.direct.read_query`)."""

    classes: list[str] | None = Field(
        None, description="class ids or names to keep; repeat or comma-separate"
    )
    tile: Annotated[str, Field(**TILE_BOUNDS, json_schema_extra={"enum": list(TILE_WORDS)})] = "false"


class JsonDetectRequest(DetectFields):
    """`POST /detect/json`: base64 images (a `data:` URL prefix is accepted) and the same parameters."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1, description="base64-encoded image files")
    classes: list[int | str] | None = Field(None, description="class ids or names to keep (default: all)")
    tile: Annotated[bool | Literal["auto"], Field(**TILE_BOUNDS)] = False


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


class V2ErrorBody(BaseModel):
    """Under /v2: the KServe v2 protocol's error body."""

    error: str


class Status(BaseModel):
    status: str
