"""Pure ASGI middleware: the request id, traces, request metrics, the catch-all 500, and the request
body size limit.

Order in the app, outermost first: CORS, RequestIds, Traces (only when tracing is on),
RequestMetrics, UnexpectedErrors, BodySizeLimit, then FastAPI's exception handlers and the routes.
So every answer (500s and 413s too) carries the request id, a traced request's span covers its
whole answer and its latency's exemplar names it, metrics see every final status, and the body
limit's 413 is shaped by the same JSON error body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import PayloadTooLarge
from service.core.metrics import Metrics
from service.http.errors import error_response
from service.logs import REQUEST_ID, start_request
from service.tracing import Tracing, exemplar

log = logging.getLogger(__name__)


REQUEST_ID_HEADER = b"x-request-id"


class RequestIds:
    """`X-Request-ID` on every HTTP answer: the request's own or a new one (`service.logs.start_request`),
    in its log records while it runs, uvicorn's access line included, and in its error body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), b"")
        request_id = start_request(given.decode("latin-1"))  # this request's task (and those it starts)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


# Not traced: probes and scrapes (a span per probe would drown the requests' traces).
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})


def traced(path: str) -> bool:
    return path not in UNTRACED and not (path.startswith("/v2/models/") and path.endswith("/ready"))


class Traces:
    """A server span per HTTP request (service.tracing), the child of the client's W3C
    `traceparent` / `tracestate` when it sent them (or what `OTEL_PROPAGATORS` reads); the answer
    carries the span's own. Health, readiness and /metrics are not traced."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app, self.tracing = app, tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not traced(scope["path"]):
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"], "url.scheme": scope["scheme"]}
        request = self.tracing.start(method, carrier, attributes, request_id=REQUEST_ID.get())
        answer_headers = [(k.encode(), v.encode()) for k, v in request.headers().items()]
        names = {name for name, _ in answer_headers}
        status: int | None = None  # until the answer starts
        error: str | None = None

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k not in names]
                message = {**message, "headers": [*headers, *answer_headers]}
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except BaseException as e:  # CancelledError: the client went away
            error = type(e).__name__
            raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            if isinstance(route, str):
                request.span.update_name(f"{method} {route}")
            ended = {
                **({"http.response.status_code": status} if status is not None else {}),
                **({"http.route": route} if route else {}),
            }
            failed = str(status) if status is not None and status >= 500 else None
            request.end(ended, error=error or failed)


class _BodyTooLarge(Exception):
    """Raised into the app's body read; private so that no exception handler answers it."""


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` (or, on a path in `path_limits`, its own limit: a video
    upload's) with 413, without reading them.

    A `Content-Length` over the limit is refused before the app runs; otherwise bytes are counted
    as they stream in, and the first chunk past the limit stops the read. Whatever response the app
    then tries to send (FastAPI turns a failed body read into a 400) is replaced by the 413.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        on_reject: Callable[[str], None] | None = None,
        path_limits: dict[str, int] | None = None,
    ) -> None:
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject
        self.path_limits = path_limits or {}

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        if self.on_reject is not None:
            self.on_reject(PayloadTooLarge.code)
        message = f"request body larger than {limit} bytes"
        await error_response(413, PayloadTooLarge.code, message, path=scope["path"])(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received, exceeded, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(scope, receive, send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class UnexpectedErrors:
    """Any exception no handler took: logged with its traceback, answered 500 in the JSON shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for a clean answer; the server closes the connection
                raise
            response = error_response(500, "internal_error", "internal server error", path=scope["path"])
            await response(scope, receive, send)


class RequestMetrics:
    """`yolor_requests_total{route,status}` and `yolor_request_duration_seconds{route}`.

    The route label is the matched route's path template (set by the router in `scope["route"]`),
    never a raw path, so it stays bounded. A request answered before routing (a 413 from the body
    limit) is labelled with its path when that is one of `paths`; anything else is `unmatched`.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: Collection[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, frozenset(paths)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and isinstance(getattr(route, "path", None), str):
            return str(route.path)
        return str(scope["path"]) if scope["path"] in self.paths else "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, start = 500, time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            duration = time.perf_counter() - start
            self.metrics.request_duration.labels(route=route).observe(duration, exemplar())
