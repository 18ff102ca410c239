"""`POST /detect` (multipart), `/detect/json` (base64) and `/detect/annotated` (JPEG out)."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import DetectorDep, DisconnectedDep, require_api_key, require_multipart
from service.detector import DetectOutcome, DetectParams
from service.drawing import draw_detections, encode_jpeg
from service.errors import InvalidBase64, InvalidParameter
from service.processing import MergeMode
from service.schemas import (
    CONF_BOUNDS,
    DEFAULT_CONF,
    DEFAULT_IOU,
    DEFAULT_MAX_DET,
    IOU_BOUNDS,
    MAX_DET_BOUNDS,
    TILE_BOUNDS,
    TILE_MERGE_DESCRIPTION,
    TILE_OVERLAP_BOUNDS,
    TILE_SIZE_BOUNDS,
    DetectResponse,
    ErrorBody,
    JsonDetectRequest,
)
from service.tiling import DEFAULT_MERGE, DEFAULT_OVERLAP, TileOptions

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 413, 415, 422, 500, 503, 504)
}
router = APIRouter(tags=["detect"], dependencies=[Depends(require_api_key)], responses=ERRORS)


ConfQuery = Annotated[float, Query(**CONF_BOUNDS)]
IouQuery = Annotated[float, Query(**IOU_BOUNDS)]
MaxDetQuery = Annotated[int, Query(**MAX_DET_BOUNDS)]
ClassesQuery = Annotated[
    list[str] | None, Query(description="class ids or names to keep; repeat or comma-separate")
]
AgnosticQuery = Annotated[bool, Query(description="NMS across classes")]
TileQuery = Annotated[str, Query(**TILE_BOUNDS)]
TileSizeQuery = Annotated[int | None, Query(**TILE_SIZE_BOUNDS)]
TileOverlapQuery = Annotated[float, Query(**TILE_OVERLAP_BOUNDS)]
TileMergeQuery = Annotated[MergeMode, Query(description=TILE_MERGE_DESCRIPTION)]


async def detect_params(
    detector: DetectorDep,
    conf: ConfQuery = DEFAULT_CONF,
    iou: IouQuery = DEFAULT_IOU,
    max_det: MaxDetQuery = DEFAULT_MAX_DET,
    classes: ClassesQuery = None,
    agnostic: AgnosticQuery = False,
    tile: TileQuery = "false",
    tile_size: TileSizeQuery = None,
    tile_overlap: TileOverlapQuery = DEFAULT_OVERLAP,
    tile_merge: TileMergeQuery = DEFAULT_MERGE,
) -> DetectParams:
    tiling = TileOptions.of(tile, tile_size, tile_overlap, tile_merge)
    return detector.params(
        conf=conf, iou=iou, max_det=max_det, classes=classes, agnostic=agnostic, tile=tiling
    )


ParamsDep = Annotated[DetectParams, Depends(detect_params)]
ImagesField = Annotated[list[UploadFile] | None, File(description="one or more image files")]
ImageField = Annotated[UploadFile | None, File(description="a single image file (alternative to images)")]


async def _read_uploads(images: list[UploadFile] | None, image: UploadFile | None) -> list[bytes]:
    uploads = [*(images or []), *([image] if image is not None else [])]
    return [await upload.read() for upload in uploads]


def _json(response: DetectResponse) -> Response:
    """`response` serialised once by pydantic-core: returned as a model, FastAPI would validate it
    again against `response_model` and encode it in a second pass (that stays the documented schema)."""
    return Response(response.model_dump_json(), media_type="application/json")


def _decode_base64(text: str, index: int) -> bytes:
    if text.startswith("data:"):  # a data URL, as browsers' FileReader produces
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"images[{index}] is not valid base64") from None


@router.post("/detect", response_model=DetectResponse, dependencies=[Depends(require_multipart)])
async def detect(
    detector: DetectorDep,
    params: ParamsDep,
    disconnected: DisconnectedDep,
    images: ImagesField = None,
    image: ImageField = None,
) -> DetectResponse:
    """Detect objects in one or more uploaded images; one result per image, in upload order."""
    started = time.monotonic()
    files = await _read_uploads(images, image)
    outcome = await detector.detect(files, params, started=started, disconnected=disconnected)
    return detector.to_response(outcome)


@router.post("/detect/json", response_model=DetectResponse)
async def detect_json(
    detector: DetectorDep, body: JsonDetectRequest, disconnected: DisconnectedDep
) -> Response:
    """The same as `/detect` for clients that cannot send multipart: base64 images in JSON."""
    started = time.monotonic()
    tiling = TileOptions.of(body.tile, body.tile_size, body.tile_overlap, body.tile_merge)
    params = detector.params(
        conf=body.conf,
        iou=body.iou,
        max_det=body.max_det,
        classes=body.classes,
        agnostic=body.agnostic,
        tile=tiling,
    )
    files = [_decode_base64(text, i) for i, text in enumerate(body.images)]
    outcome = await detector.detect(files, params, started=started, disconnected=disconnected)
    return _json(detector.to_response(outcome))


def _render(outcome: DetectOutcome, class_names: list[str]) -> bytes:
    result = outcome.images[0]
    assert result.image is not None
    return encode_jpeg(draw_detections(result.image, result.detections, class_names))


@router.post(
    "/detect/annotated",
    response_class=Response,
    dependencies=[Depends(require_multipart)],
    responses={200: {"content": {"image/jpeg": {}}, "description": "the image with boxes and labels"}},
)
async def detect_annotated(
    detector: DetectorDep,
    params: ParamsDep,
    disconnected: DisconnectedDep,
    images: ImagesField = None,
    image: ImageField = None,
) -> Response:
    """One uploaded image back as JPEG with its detections drawn (header X-Detections: count)."""
    started = time.monotonic()
    files = await _read_uploads(images, image)
    if len(files) > 1:
        raise InvalidParameter(f"/detect/annotated takes exactly one image, got {len(files)}")
    outcome = await detector.detect(
        files, params, started=started, keep_images=True, disconnected=disconnected
    )
    jpeg = await run_in_threadpool(_render, outcome, detector.manifest.class_names)
    count = len(outcome.images[0].detections)
    return Response(jpeg, media_type="image/jpeg", headers={"X-Detections": str(count)})
