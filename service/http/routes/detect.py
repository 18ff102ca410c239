"""`POST /detect` (multipart), `/detect/json` (base64) and `/detect/annotated` (JPEG out)."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.core.detector import DetectOutcome
from service.core.errors import InvalidBase64, InvalidParameter
from service.core.model import LoadedModel
from service.core.options import DetectParams
from service.core.results import DetectResponse
from service.core.state import ServiceState
from service.http import responses
from service.http.deps import API_KEY_SECURITY, check_api_key
from service.http.direct import (
    DirectRoute,
    client_disconnected,
    json_body,
    query_parameters,
    read_json,
    read_query,
    require_multipart,
)
from service.http.schemas import DetectQuery, ErrorBody, JsonDetectRequest
from service.processing.drawing import draw_detections, encode_jpeg

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 415, 422, 500, 503, 504)
}
# The detect routes read their own request (service.http.direct: the hot path, no dependencies).
router = APIRouter(tags=["detect"], responses=ERRORS, route_class=DirectRoute)

_FILE = {"type": "string", "contentMediaType": "application/octet-stream"}


def upload_openapi(*, one_image: bool = False) -> dict[str, Any]:
    """The OpenAPI of what `_detect_upload` reads: the query string, the files, the API key."""
    images = {"type": "array", "items": _FILE, "minItems": 1, "description": "one or more image files"}
    if one_image:
        images |= {"maxItems": 1, "description": "the image file (or send it as image)"}
    required = [{"required": ["images"]}, {"required": ["image"]}]  # neither: 422 no_images
    form = {
        "type": "object",
        "properties": {
            "images": images,
            "image": {**_FILE, "description": "a single image file (alternative to images)"},
        },
        **({"oneOf": required} if one_image else {"anyOf": required}),
    }
    return {
        "parameters": query_parameters(DetectQuery),
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
        "security": API_KEY_SECURITY,
    }


UPLOAD_FIELDS = ("images", "image")


async def _read_files(request: Request) -> list[bytes]:
    """The uploaded files of `images` then `image`, in order (other fields are ignored); a text
    value in one of them is a 422, an unparseable body a 400 (Starlette's)."""
    async with request.form() as form:
        files, errors = [], []
        for name in UPLOAD_FIELDS:
            for i, value in enumerate(form.getlist(name)):
                if isinstance(value, UploadFile):
                    files.append(await value.read())
                else:
                    loc = ("body", name, i) if name == "images" else ("body", name)
                    errors.append({"loc": loc, "msg": "expected an image file, got a text field"})
        if errors:
            raise RequestValidationError(errors)
        return files


Respond = Callable[[LoadedModel, DetectOutcome], Awaitable[Response]]


async def _detect(
    request: Request,
    files: list[bytes],
    query: DetectQuery | JsonDetectRequest,
    respond: Respond,
    *,
    keep_images: bool = False,
) -> Response:
    """Detections for a request whose key, body and parameters were checked: the model is taken now
    (503 until ready), once the body is read (a slow upload does not hold it), and held until
    `respond` has made the answer (a reload retires it after). As with FastAPI's parameters, the
    request's time and deadline start once its body is in."""
    started = time.monotonic()
    state: ServiceState = request.app.state.service
    model = await state.take(query.model, query.version)
    with model.use() as detector:
        disconnected = await client_disconnected(request)
        outcome = await detector.detect(
            files,
            DetectParams.of(query.options(), detector.manifest.class_names),
            started=started,
            keep_images=keep_images,
            disconnected=disconnected,
        )
        return await respond(model, outcome)


async def _detect_upload(request: Request, respond: Respond, *, one_image: bool = False) -> Response:
    """A multipart detect request: API key (401/403), content type (415), query string (422), files
    (400 unparseable, 422), then `_detect`. `one_image`: at most one file, its decoded image kept
    for drawing."""
    await check_api_key(request, request.app.state.service)
    elsewhere = " (base64 JSON goes to POST /detect/json)"
    require_multipart(request, "image files in 'images'", elsewhere=elsewhere)
    query = read_query(DetectQuery, request, lists=("classes",))
    files = await _read_files(request)
    if one_image and len(files) > 1:
        raise InvalidParameter(f"{request.url.path} takes exactly one image, got {len(files)}")
    return await _detect(request, files, query, respond, keep_images=one_image)


async def _respond_json(model: LoadedModel, outcome: DetectOutcome) -> Response:
    return _json(responses.detect_response(model, outcome))


def _json(response: DetectResponse) -> Response:
    """`response` serialised once by pydantic-core (the route's `response_model` documents it)."""
    return Response(response.model_dump_json(), media_type="application/json")


def _decode_base64(text: str, index: int) -> bytes:
    if text.startswith("data:"):  # a data URL, as browsers' FileReader produces
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"images[{index}] is not valid base64") from None


@router.post("/detect", response_model=DetectResponse, openapi_extra=upload_openapi())
async def detect(request: Request) -> Response:
    """Detect objects in one or more uploaded images; one result per image, in upload order."""
    return await _detect_upload(request, _respond_json)


JSON_OPENAPI = {"requestBody": json_body(JsonDetectRequest), "security": API_KEY_SECURITY}


@router.post("/detect/json", response_model=DetectResponse, openapi_extra=JSON_OPENAPI)
async def detect_json(request: Request) -> Response:
    """The same as `/detect` for clients that cannot send multipart: base64 images in JSON.
    API key (401/403), content type (415), body (422, 400 for bad base64), then the model (503)."""
    await check_api_key(request, request.app.state.service)
    body = await read_json(JsonDetectRequest, request, elsewhere=" (multipart uploads go to POST /detect)")
    files = [_decode_base64(text, i) for i, text in enumerate(body.images)]
    return await _detect(request, files, body, _respond_json)


def _render(outcome: DetectOutcome, class_names: list[str]) -> bytes:
    result = outcome.images[0]
    assert result.image is not None
    return encode_jpeg(draw_detections(result.image, result.detections, class_names))


@router.post(
    "/detect/annotated",
    response_class=Response,
    openapi_extra=upload_openapi(one_image=True),
    responses={200: {"content": {"image/jpeg": {}}, "description": "the image with boxes and labels"}},
)
async def detect_annotated(request: Request) -> Response:
    """One uploaded image back as JPEG with its detections drawn (header X-Detections: count)."""

    async def respond(model: LoadedModel, outcome: DetectOutcome) -> Response:
        jpeg = await run_in_threadpool(_render, outcome, model.manifest.class_names)
        count = len(outcome.images[0].detections)
        return Response(jpeg, media_type="image/jpeg", headers={"X-Detections": str(count)})

    return await _detect_upload(request, respond, one_image=True)
