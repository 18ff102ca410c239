"""Live streams over HTTP: `POST /streams` (admin key: a stream makes the server connect out),
`GET /streams`, `GET /streams/{id}`, `DELETE /streams/{id}` (admin key), and each stream's results:
`/events` (Server-Sent Events), `/ws` (WebSocket) and `/mjpeg` (the annotated frames as
`multipart/x-mixed-replace`, what an `<img>` shows).

The result routes take the API key from the headers or, because browsers' EventSource, WebSocket
and `<img>` cannot send headers, from an `api_key` query parameter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from service.core.errors import InvalidParameter, ServiceError
from service.core.state import ServiceState
from service.http.deps import HOW, check_api_key, require_admin_key
from service.http.schemas import ErrorBody
from service.processing.drawing import draw_detections, encode_jpeg
from service.streams.hub import Message
from service.streams.manager import StreamManager
from service.streams.spec import EVENT_KINDS, StreamSpec
from service.streams.stream import View

router = APIRouter(prefix="/streams", tags=["streams"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorBody} for s in (401, 403, 404, 409, 422)}
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
MESSAGE_TYPES = ("frame", *EVENT_KINDS, "state")
Types = Query(
    None, description=f"comma-separated message types to receive ({', '.join(MESSAGE_TYPES)}); default all"
)
Key = Query(None, description="the API key, for clients that cannot send headers (EventSource, <img>)")


def _manager(request: Request | WebSocket) -> StreamManager:
    manager: StreamManager = request.app.state.streams
    return manager


async def _check_viewer(request: Request | WebSocket, api_key: str | None) -> None:
    """An API key from the headers or the query string (when keys are configured)."""
    await check_api_key(
        request, request.app.state.service, query_key=api_key, how=f"{HOW}, or ?api_key=<key>"
    )


def _types(text: str | None) -> frozenset[str] | None:
    if not text:
        return None
    wanted = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = wanted - set(MESSAGE_TYPES)
    if unknown:
        raise InvalidParameter(f"unknown message types {sorted(unknown)}; known: {', '.join(MESSAGE_TYPES)}")
    return wanted


@router.post("", status_code=201, responses=ERRORS, dependencies=[Depends(require_admin_key)])
async def create_stream(request: Request, spec: StreamSpec) -> dict[str, Any]:
    """Open a source and start detecting on it; 201 with the stream's status (its `id` names it)."""
    stream = await _manager(request).create(spec)
    return stream.status()


@router.get("", responses=ERRORS)
async def list_streams(request: Request, api_key: str | None = Key) -> dict[str, Any]:
    await _check_viewer(request, api_key)
    return {"streams": [s.status() for s in _manager(request).streams.values()]}


@router.get("/{stream_id}", responses=ERRORS)
async def get_stream(request: Request, stream_id: str, api_key: str | None = Key) -> dict[str, Any]:
    """State (starting, running, reconnecting, ended, failed), rates, drops, latency, counts."""
    await _check_viewer(request, api_key)
    return _manager(request).get(stream_id).status()


@router.delete("/{stream_id}", status_code=204, responses=ERRORS, dependencies=[Depends(require_admin_key)])
async def delete_stream(request: Request, stream_id: str) -> Response:
    await _manager(request).delete(stream_id)
    return Response(status_code=204)


@router.get(
    "/{stream_id}/events",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    response_class=StreamingResponse,
)
async def stream_events(
    request: Request, stream_id: str, types: str | None = Types, api_key: str | None = Key
) -> StreamingResponse:
    """Server-Sent Events: `event:` the message type, `data:` its JSON; a listener that falls behind
    loses its oldest messages (the next one says how many: `lost`)."""
    await _check_viewer(request, api_key)
    stream = _manager(request).get(stream_id)
    kinds = _types(types)

    async def body() -> AsyncIterator[str]:
        with stream.hub.listen(kinds) as listener:
            yield f": stream {stream.id}\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(listener.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if message is None:
                    return
                yield f"event: {message['type']}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


@router.websocket("/{stream_id}/ws")
async def stream_socket(
    websocket: WebSocket, stream_id: str, types: str | None = None, api_key: str | None = None
) -> None:
    """The same messages as /events, one JSON text message each. Refused after the handshake, so
    that the client reads why: close code 1008 (no or a wrong API key) or 4000 + the HTTP status
    (4404: no such stream, 4422: unknown message types), the reason the error's message."""
    await websocket.accept()
    try:
        await _check_viewer(websocket, api_key)
        stream = _manager(websocket).get(stream_id)
        kinds = _types(types)
    except ServiceError as e:
        await websocket.close(code=1008 if e.status in (401, 403) else 4000 + e.status, reason=str(e)[:120])
        return
    with stream.hub.listen(kinds) as listener:
        receiving = asyncio.create_task(_until_closed(websocket))
        try:
            while True:
                getting = asyncio.create_task(listener.get())
                await asyncio.wait({getting, receiving}, return_when=asyncio.FIRST_COMPLETED)
                if receiving.done():
                    getting.cancel()
                    return
                message: Message | None = getting.result()
                if message is None:
                    await websocket.close()
                    return
                await websocket.send_text(json.dumps(message, separators=(",", ":")))
        except WebSocketDisconnect:
            return
        finally:
            receiving.cancel()


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it closes."""
    try:
        while True:
            await websocket.receive_text()
    except (WebSocketDisconnect, RuntimeError):
        return


BOUNDARY = "yolorframe"


@router.get(
    "/{stream_id}/mjpeg",
    responses={**ERRORS, 200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}}}},
    response_class=StreamingResponse,
)
async def stream_mjpeg(request: Request, stream_id: str, api_key: str | None = Key) -> StreamingResponse:
    """The processed frames with their boxes drawn, as they come: `multipart/x-mixed-replace` JPEGs."""
    await _check_viewer(request, api_key)
    stream = _manager(request).get(stream_id)
    loop = asyncio.get_running_loop()
    state: ServiceState = request.app.state.service

    async def body() -> AsyncIterator[bytes]:
        with stream.watch() as views:
            async for view in views:
                jpeg = await loop.run_in_executor(state.pool, _annotated, view)
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                yield head.encode() + jpeg + b"\r\n"

    return StreamingResponse(body(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")


def _annotated(view: View) -> bytes:
    image = draw_detections(view.image, view.detections, view.names, track_ids=view.track_ids)
    return encode_jpeg(image, quality=80)
