"""`POST /detect/video`: one uploaded clip in, its frames' detections streamed out as NDJSON.

One line per processed frame (`frame`, `pts_s`, `detections`) as soon as it is ready, then one
`summary` line; a clip that breaks after its first frame ends with an `error` line before the
summary (the status, 200, was sent with the first line). Everything refused before the first frame
(key, content type, parameters, size, not a video, a container or codec not allowed, too long, too
large a frame) is the usual JSON error with its 4xx status. The model is held until the last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import UploadFile

from service.core.errors import ServiceError, UnsupportedMediaType
from service.core.options import DetectParams
from service.core.state import ServiceState
from service.core.video import VideoClip, VideoLimits
from service.core.video_detection import FrameDetections, detect_frames
from service.http import responses
from service.http.deps import API_KEY_SECURITY, check_api_key
from service.http.direct import DirectRoute, query_parameters, read_query
from service.http.schemas import ErrorBody, VideoQuery

VIDEO_PATH = "/detect/video"
FIELD = "video"
NDJSON = "application/x-ndjson"

router = APIRouter(
    tags=["detect"],
    responses={s: {"model": ErrorBody} for s in (400, 401, 403, 413, 415, 422, 503)},
    route_class=DirectRoute,
)


OPENAPI = {
    "parameters": query_parameters(VideoQuery),
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {FIELD: {"type": "string", "contentMediaType": "application/octet-stream"}},
                    "required": [FIELD],
                }
            }
        },
    },
    "security": API_KEY_SECURITY,
}
ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": {"type": "string"}}},
        "description": "one JSON object per line: each processed frame's detections, then a summary",
    }
}


@router.post(VIDEO_PATH, response_class=Response, openapi_extra=OPENAPI, responses=ANSWER)
async def detect_video(request: Request) -> Response:
    """Detect objects in the frames of one uploaded video; the results stream as NDJSON lines."""
    state: ServiceState = request.app.state.service
    await check_api_key(request, state)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        got = content_type or "no content type"
        raise UnsupportedMediaType(f"expected multipart/form-data with the clip in {FIELD!r}, got {got!r}")
    query = read_query(VideoQuery, request, lists=("classes",))
    form = await request.form(max_files=1)
    upload = form.get(FIELD)
    if not isinstance(upload, UploadFile):
        await form.close()
        raise RequestValidationError([{"loc": ("body", FIELD), "msg": "expected one video file"}])
    async with contextlib.AsyncExitStack() as stack:
        # The upload's file is the clip's once it opens (closed by it, after its last decoding).
        try:
            detector = stack.enter_context(state.current().use())
            params = DetectParams.of(query.options(), detector.manifest.class_names)
        except BaseException:
            upload.file.close()
            raise
        settings = state.settings
        limits = VideoLimits(
            max_frames=settings.max_video_frames,
            max_seconds=settings.max_video_seconds,
            max_pixels=settings.max_image_pixels,
            containers=frozenset(settings.video_containers),
            codecs=frozenset(settings.video_codecs),
        )
        loop = asyncio.get_running_loop()
        clip = await loop.run_in_executor(detector.pool, VideoClip, upload.file, limits)
        frames = detect_frames(detector, clip, params, stride=query.vid_stride, max_frames=query.max_frames)
        stack.push_async_callback(frames.aclose)  # it closes the clip, once no decoding of it runs
        started = time.monotonic()
        first = await anext(frames, None)  # an error before the first frame is a 4xx answer
        detector.metrics.video_requests.inc()
        names = detector.manifest.class_names
        body = _lines(first, frames, clip, names, started, stack.pop_all())
        return StreamingResponse(body, media_type=NDJSON)
    raise AssertionError("unreachable")  # the stack re-raises what its body raised


async def _lines(
    first: FrameDetections | None,
    frames: AsyncGenerator[FrameDetections, None],
    clip: VideoClip,
    names: list[str],
    started: float,
    held: contextlib.AsyncExitStack,
) -> AsyncIterator[bytes]:
    """The NDJSON body; `held` (the model, the frames and with them the clip) is released at its
    end, or when the client goes away and the server stops the stream."""
    async with held:
        processed = 0
        error: dict[str, Any] | None = None
        if first is not None:
            processed += 1
            yield _line(responses.frame_json(first, names))
            try:
                async for frame in frames:
                    processed += 1
                    yield _line(responses.frame_json(frame, names))
            except ServiceError as e:
                error = {"code": e.code, "message": e.message}
        if error is not None:
            yield _line({"error": error})
        yield _line({"summary": responses.video_summary(clip, processed, time.monotonic() - started)})


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
