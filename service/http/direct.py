"""Routes FastAPI calls without its parameter machinery, for the detect routes on the hot path.

FastAPI resolves each dependency and validates each query parameter and form field on its own: on
`POST /detect` that was a large share of the event loop's CPU per request under load, and of what
the server spends beside inference on the demo model (measured: docs/benchmarks.md,
"The event loop's share"). A `DirectRoute` endpoint takes the `Request` and returns a `Response`;
it reads the query string or a JSON body with one pydantic model (`read_query`, `read_json`: one
validation call) and declares that model for OpenAPI (`query_parameters`, `json_body`), so /docs
shows the same contract. Invalid input answers as FastAPI's would: RequestValidationError (422,
`query.<name>` / `body.<name>` locations) through the app's handlers.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from service.core.detector import Disconnected
from service.core.errors import UnsupportedMediaType

Model = TypeVar("Model", bound=BaseModel)


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint is `async def (request) -> Response`, called as it is: no
    dependencies (a router's too are not run: put these routes on a router without any), no
    parameter or response validation. OpenAPI still comes from the route (response_model,
    responses, `openapi_extra`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


def _invalid(e: ValidationError, where: str) -> RequestValidationError:
    return RequestValidationError(
        [{**error, "loc": (where, *error["loc"])} for error in e.errors(include_input=False)]
    )


def read_query(model: type[Model], request: Request, *, lists: Sequence[str] = ()) -> Model:
    """The query string as `model` (the last value of a repeated parameter; every value of those
    in `lists`); 422 when it does not validate."""
    query = request.query_params
    values: dict[str, Any] = dict(query)
    values.update({name: query.getlist(name) for name in lists if name in query})
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise _invalid(e, "query") from None


def require_multipart(request: Request, wanted: str, *, elsewhere: str = "") -> None:
    """415 unless the body is multipart/form-data; the message says what the form should hold
    (`wanted`) and where other bodies go (`elsewhere`)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        got = content_type or "no content type"
        raise UnsupportedMediaType(f"expected multipart/form-data with {wanted}, got {got!r}{elsewhere}")


def is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(model: type[Model], request: Request, *, elsewhere: str = "") -> Model:
    """The body as `model`, parsed and validated by pydantic-core in one pass (a UTF-8 BOM allowed,
    a repeated key's last value); 415 unless the content type is JSON (`elsewhere`: where other
    bodies go), 422 for malformed JSON or a body that does not validate."""
    content_type = request.headers.get("content-type", "")
    if not is_json(content_type):
        raise UnsupportedMediaType(
            f"expected application/json, got {content_type or 'no content type'!r}{elsewhere}"
        )
    body = (await request.body()).removeprefix(codecs.BOM_UTF8)
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise _invalid(e, "body") from None


async def read_lenient_json(model: type[Model], request: Request) -> Model | None:
    """The body as `model` whatever its content type, None when it is empty: Triton's clients send
    their repository requests' JSON with none (an empty body for the index). 422 as `read_json`."""
    body = (await request.body()).removeprefix(codecs.BOM_UTF8)
    if not body.strip():
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise _invalid(e, "body") from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a body read with `read_json(model, ...)`."""
    return {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI `parameters` for a query string read with `read_query(model, ...)`: one optional
    parameter per field, its JSON schema (bounds, default, enum) and description."""
    properties = model.model_json_schema()["properties"]
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": schema.get("description", ""),
            "schema": schema,
        }
        for name, schema in properties.items()
    ]


async def client_disconnected(request: Request) -> Disconnected:
    """An awaitable that returns once the client has gone away; call it after the body was read.

    Servers answer `receive()` with `http.disconnect` when the connection closes (uvicorn) or the
    response is complete (test transports), so this waits without polling.
    """

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait
