"""The HTTP API contract: request bodies, and the response bodies beyond the detect results
(`service.core.results`), as pydantic models shown at /docs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.core.options import TILE_BOUNDS, DetectFields, ModelChoice, TrackingFields
from service.core.tiling import TILE_WORDS
from service.manifest import ModelManifest

QueryClasses = Annotated[
    list[str] | None, Field(description="class ids or names to keep; repeat or comma-separate")
]


class DetectQuery(DetectFields, ModelChoice):
    """The query string of `POST /detect` and `/detect/annotated` (`service.http.direct.read_query`)."""

    classes: QueryClasses = None
    tile: Annotated[str, Field(**TILE_BOUNDS, json_schema_extra={"enum": list(TILE_WORDS)})] = "false"


class VideoQuery(DetectQuery, TrackingFields):
    """The query string of `POST /detect/video`: /detect's parameters (sliced inference included),
    which frames to run, the annotated answer and tracking."""

    vid_stride: int = Field(1, ge=1, le=10_000, description="run every Nth frame (1: every frame)")
    max_frames: int | None = Field(None, ge=1, description="stop after this many processed frames")
    annotated: bool = Field(
        False, description="answer the processed frames as a video with the boxes drawn (MP4/H.264 or WebM)"
    )


class JsonDetectRequest(DetectFields, ModelChoice):
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
    request_id: str | None = Field(None, description="the answer's X-Request-ID")


class ErrorBody(BaseModel):
    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """Under /v2: the KServe v2 protocol's error body."""

    error: str


class Status(BaseModel):
    status: str
