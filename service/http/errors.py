"""The one JSON shape every HTTP error takes, and the handlers that give it.

`{"error": {"code": "...", "message": "..."}}` for every status, FastAPI's own 404/405/422
included; under `/v2` (the KServe v2 protocol) the protocol's `{"error": "..."}`, same statuses.
Service errors (`service.core.errors`) carry their status and code; 503s get a `Retry-After`
header. Unexpected exceptions become a 500 without a traceback in the body
(`service.http.middleware.UnexpectedErrors`).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.core.errors import ServiceError
from service.logs import REQUEST_ID

MAX_VALIDATION_MESSAGE = 1000

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


V2_PREFIX = "/v2"  # the KServe v2 protocol's paths, with its own error body


def error_body(code: str, message: str, path: str = "") -> dict[str, Any]:
    """Ours, with the request's id (the X-Request-ID header's) when it has one; under /v2 the
    protocol's, a string (the id is in the header only)."""
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return {"error": message}
    detail = {"code": code, "message": message}
    if (request_id := REQUEST_ID.get()) is not None:
        detail["request_id"] = request_id
    return {"error": detail}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    path: str = "",
    retry_after_s: int = 1,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error response for a request to `path`; every 503 tells the client when to retry."""
    all_headers = dict(headers or {})
    if status == 503:
        all_headers.setdefault("Retry-After", str(retry_after_s))
    return JSONResponse(error_body(code, message, path), status_code=status, headers=all_headers)


def _validation_message(exc: RequestValidationError) -> str:
    # The offending input is left out: it may be megabytes of base64.
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)[:MAX_VALIDATION_MESSAGE] or "invalid request"


def install_error_handlers(
    app: FastAPI, *, retry_after_s: int, on_reject: Callable[[str], None] | None = None
) -> None:
    """Route ServiceError, HTTPException and validation errors to the one JSON shape.

    `on_reject(code)` counts refusals (`yolor_rejected_total{reason}`): service errors other than 500,
    validation errors and unparseable bodies; not 404/405.
    """

    def reject(code: str) -> None:
        if on_reject is not None:
            on_reject(code)

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        if exc.status not in (404, 500):  # a missing resource is not a refusal, as FastAPI's 404
            reject(exc.code)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(
            exc.status,
            exc.code,
            exc.message,
            path=request.url.path,
            retry_after_s=retry_after_s,
            headers=headers,
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else _phrase(exc.status_code)
        if exc.status_code == 400:  # FastAPI's answer to an unparseable body
            reject(code)
        return error_response(
            exc.status_code,
            code,
            message,
            path=request.url.path,
            retry_after_s=retry_after_s,
            headers=dict(exc.headers or {}),
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        reject("invalid_request")
        return error_response(422, "invalid_request", _validation_message(exc), path=request.url.path)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
