"""`POST /detect/video`: one uploaded clip in, its frames' detections streamed out as NDJSON, or
with `annotated=true` the processed frames as a video with the boxes drawn.

NDJSON: one line per processed frame (`frame`, `pts_s`, `detections`) as soon as it is ready, then
one `summary` line; a clip that breaks after its first frame ends with an `error` line before the
summary (the status, 200, was sent with the first line). An annotated video that breaks ends early
(its last fragment is whole). Everything refused before the first frame (key, content type,
parameters, size, not a video, a container or codec not allowed, too long, too large a frame) is
the usual JSON error with its 4xx status. The model is held until the last byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import Executor
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import UploadFile

from service.core.errors import InvalidVideo, ServiceError
from service.core.options import DetectParams
from service.core.results import frame_json, video_summary
from service.core.state import ServiceState
from service.core.video import VideoClip, VideoLimits
from service.core.video_detection import FrameDetections, TrackBook, detect_frames
from service.core.video_writer import AnnotatedVideoWriter, best_format
from service.http.deps import API_KEY_SECURITY, check_api_key
from service.http.direct import DirectRoute, query_parameters, read_query, require_multipart
from service.http.schemas import ErrorBody, VideoQuery
from service.processing.drawing import draw_detections
from service.tracking import ByteTracker

log = logging.getLogger(__name__)

VIDEO_PATH = "/detect/video"
FIELD = "video"
NDJSON = "application/x-ndjson"

router = APIRouter(
    tags=["detect"],
    responses={s: {"model": ErrorBody} for s in (400, 401, 403, 404, 413, 415, 422, 503)},
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
        "content": {
            NDJSON: {"schema": {"type": "string"}},
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
            "video/webm": {"schema": {"type": "string", "format": "binary"}},
        },
        "description": "one JSON object per line: each processed frame's detections, then a summary; "
        "with annotated=true the processed frames as a video with the boxes drawn",
    }
}


@router.post(VIDEO_PATH, response_class=Response, openapi_extra=OPENAPI, responses=ANSWER)
async def detect_video(request: Request) -> Response:
    """Detect objects in the frames of one uploaded video; the results stream as NDJSON lines."""
    state: ServiceState = request.app.state.service
    await check_api_key(request, state)
    require_multipart(request, f"the clip in {FIELD!r}")
    query = read_query(VideoQuery, request, lists=("classes",))
    form = await request.form(max_files=1)
    upload = form.get(FIELD)
    if not isinstance(upload, UploadFile):
        await form.close()
        raise RequestValidationError([{"loc": ("body", FIELD), "msg": "expected one video file"}])
    async with contextlib.AsyncExitStack() as stack:
        # The upload's file is the clip's once it opens (closed by it, after its last decoding).
        try:
            detector = stack.enter_context((await state.take(query.model, query.version)).use())
            params = DetectParams.of(query.options(), detector.manifest.class_names)
        except BaseException:
            upload.file.close()
            raise
        loop = asyncio.get_running_loop()
        limits = VideoLimits.of(state.settings)
        clip = await loop.run_in_executor(detector.pool, VideoClip, upload.file, limits)
        tracker, book = None, None
        if query.track:
            try:
                settings = query.tracker_settings(clip.info.rate(query.vid_stride))
                tracker, book = ByteTracker(settings), TrackBook()
            except BaseException:
                clip.close()  # detect_frames, which would close it, does not run
                raise
        frames = detect_frames(
            detector,
            clip,
            params,
            stride=query.vid_stride,
            max_frames=query.max_frames,
            keep_images=query.annotated,
            tracker=tracker,
            book=book,
        )
        stack.push_async_callback(frames.aclose)  # it closes the clip, once no decoding of it runs
        started = time.monotonic()
        first = await anext(frames, None)  # an error before the first frame is a 4xx answer
        names = detector.manifest.class_names
        if query.annotated:
            if first is None:
                raise InvalidVideo("the clip has no frame to annotate")
            fps = clip.info.rate(query.vid_stride)
            make = functools.partial(AnnotatedVideoWriter, first.width, first.height, fps, best_format())
            writer = await loop.run_in_executor(detector.pool, make)
            detector.metrics.video_requests.inc()
            video = _video(first, frames, writer, names, detector.pool, stack.pop_all())
            return StreamingResponse(video, media_type=writer.format.media_type)
        detector.metrics.video_requests.inc()
        body = _lines(first, frames, clip, names, book, started, stack.pop_all())
        return StreamingResponse(body, media_type=NDJSON)
    raise AssertionError("unreachable")  # the stack re-raises what its body raised


async def _lines(
    first: FrameDetections | None,
    frames: AsyncGenerator[FrameDetections, None],
    clip: VideoClip,
    names: list[str],
    book: TrackBook | None,
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
            yield _line(frame_json(first, names))
            try:
                async for frame in frames:
                    processed += 1
                    yield _line(frame_json(frame, names))
            except ServiceError as e:
                error = {"code": e.code, "message": e.message}
        if error is not None:
            yield _line({"error": error})
        yield _line({"summary": video_summary(clip, processed, time.monotonic() - started, names, book)})


async def _video(
    first: FrameDetections,
    frames: AsyncGenerator[FrameDetections, None],
    writer: AnnotatedVideoWriter,
    names: list[str],
    pool: Executor,
    held: contextlib.AsyncExitStack,
) -> AsyncIterator[bytes]:
    """The annotated video's bytes as the muxer writes them; drawing and encoding in the pool."""
    loop = asyncio.get_running_loop()

    def add(frame: FrameDetections) -> bytes:
        assert frame.image is not None  # kept: keep_images
        return writer.add(draw_detections(frame.image, frame.detections, names, frame.track_ids))

    async with held:
        try:
            frame: FrameDetections | None = first
            while frame is not None:
                if data := await loop.run_in_executor(pool, add, frame):
                    yield data
                frame = await anext(frames, None)
        except ServiceError as e:
            log.warning("annotated video ends early: %s", e.message)
        yield await loop.run_in_executor(pool, writer.close)


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
