"""The HTTP API contract: request and response bodies (pydantic), shown at /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.manifest import ModelManifest
from service.processing import MergeMode
from service.tiling import DEFAULT_MERGE, DEFAULT_OVERLAP, MAX_OVERLAP, MAX_SIZE, MIN_SIZE, TILE_WORDS

# The post-processing parameters' bounds, for JSON bodies and query strings alike.
CONF_BOUNDS: dict[str, Any] = {"ge": 0.0, "le": 1.0, "description": "keep detections with score > conf"}
IOU_BOUNDS: dict[str, Any] = {"ge": 0.0, "le": 1.0, "description": "NMS IoU threshold"}
MAX_DET_BOUNDS: dict[str, Any] = {"ge": 1, "le": 10_000, "description": "most detections per image"}

TILE_BOUNDS: dict[str, Any] = {
    "description": "sliced inference: false, true (any image larger than a window) or auto (only an "
    "image more than twice the model input)"
}
TILE_SIZE_BOUNDS: dict[str, Any] = {
    "ge": MIN_SIZE,
    "le": MAX_SIZE,
    "description": "window side in image pixels (default: the model input, grown to fit the tile limit)",
}
TILE_OVERLAP_BOUNDS: dict[str, Any] = {
    "ge": 0.0,
    "le": MAX_OVERLAP,
    "description": "neighbouring windows' overlap",
}
TILE_MERGE_DESCRIPTION = "merging of overlapping windows' detections: nmm (union of the matches) or nms"

Conf = Annotated[float, Field(**CONF_BOUNDS)]
Iou = Annotated[float, Field(**IOU_BOUNDS)]
MaxDet = Annotated[int, Field(**MAX_DET_BOUNDS)]
TileSize = Annotated[int | None, Field(**TILE_SIZE_BOUNDS)]
TileOverlap = Annotated[float, Field(**TILE_OVERLAP_BOUNDS)]

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


class DetectQuery(BaseModel):
    """The query string of `POST /detect` and `/detect/annotated` (`service.api.direct.read_query`)."""

    conf: Conf = DEFAULT_CONF
    iou: Iou = DEFAULT_IOU
    max_det: MaxDet = DEFAULT_MAX_DET
    classes: list[str] | None = Field(
        None, description="class ids or names to keep; repeat or comma-separate"
    )
    agnostic: bool = Field(False, description="NMS across classes")
    tile: Annotated[str, Field(**TILE_BOUNDS, json_schema_extra={"enum": list(TILE_WORDS)})] = "false"
    tile_size: TileSize = None
    tile_overlap: TileOverlap = DEFAULT_OVERLAP
    tile_merge: MergeMode = Field(DEFAULT_MERGE, description=TILE_MERGE_DESCRIPTION)


class JsonDetectRequest(BaseModel):
    """`POST /detect/json`: base64 images (a `data:` URL prefix is accepted) and the same parameters."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1, description="base64-encoded image files")
    conf: Conf = DEFAULT_CONF
    iou: Iou = DEFAULT_IOU
    max_det: MaxDet = DEFAULT_MAX_DET
    classes: list[int | str] | None = Field(None, description="class ids or names to keep (default: all)")
    agnostic: bool = False
    tile: Annotated[bool | Literal["auto"], Field(**TILE_BOUNDS)] = False
    tile_size: TileSize = None
    tile_overlap: TileOverlap = DEFAULT_OVERLAP
    tile_merge: MergeMode = Field(DEFAULT_MERGE, description=TILE_MERGE_DESCRIPTION)


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
