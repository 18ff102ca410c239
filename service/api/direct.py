"""Routes FastAPI calls without its parameter machinery, for the upload routes on the hot path.

FastAPI resolves each dependency and validates each query parameter and form field on its own: on
`POST /detect` that was ~0.55 ms of the event loop's CPU per request under load (py-spy and
per-thread CPU, docs/benchmarks.md), a quarter of what the rest of the server spends beside
inference on the demo model. A `DirectRoute` endpoint takes the `Request` and returns a `Response`;
it reads the query string with one pydantic model (`read_query`) and declares that model and its
body for OpenAPI (`query_parameters`), so /docs shows the same contract. Its checks answer as
FastAPI's would: RequestValidationError (422) through the app's handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint is `async def (request) -> Response`, called as it is: no
    dependencies (a router's too are not run: put these routes on a router without any), no
    parameter or response validation. OpenAPI still comes from the route (response_model,
    responses, `openapi_extra`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


def read_query(model: type[Model], request: Request, *, lists: tuple[str, ...] = ()) -> Model:
    """The query string as `model` (the last value of a repeated parameter; every value of those
    in `lists`); 422 with FastAPI's `query.<name>` locations when it does not validate."""
    query = request.query_params
    values: dict[str, Any] = dict(query)
    values.update({name: query.getlist(name) for name in lists if name in query})
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in e.errors(include_input=False)]
        ) from None


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
