"""Dependencies shared by the routes, as `Annotated` aliases (full-stack-fastapi-template style).

All are `async def`: none blocks, and FastAPI runs a plain `def` dependency in its thread pool,
one thread hop per dependency per request, and every hop costs CPU (measured: docs/benchmarks.md,
"What changed the served numbers").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from service.core.auth import presented_key
from service.core.errors import Forbidden
from service.core.state import ServiceState

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (when configured)")
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token (when configured)")


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


# The two security schemes, as OpenAPI documents them; the key itself is read by `presented_key`.
ApiKeyDep = Annotated[str | None, Security(_api_key_header)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]

HOW = "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def _presented(request: HTTPConnection) -> str | None:
    return presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))


async def require_api_key(request: Request, state: StateDep, _key: ApiKeyDep, _bearer: BearerDep) -> None:
    """401 without a key, 403 with a wrong one; a no-op when no keys are configured."""
    if state.api_keys.enabled:
        state.api_keys.check(_presented(request), how=HOW)


async def check_api_key(
    request: HTTPConnection, state: ServiceState, *, query_key: str | None = None, how: str = HOW
) -> None:
    """`require_api_key` for a route without dependencies (a `DirectRoute`, a WebSocket); `query_key`:
    the key a client that cannot send headers put in the query string (the headers' wins)."""
    if state.api_keys.enabled:
        state.api_keys.check(_presented(request) or query_key, how=how)


API_KEY_SECURITY: list[dict[str, list[str]]] = [
    {_api_key_header.scheme_name: []},
    {_bearer.scheme_name: []},
]  # as OpenAPI lists it


async def require_admin_key(request: Request, state: StateDep, _key: ApiKeyDep, _bearer: BearerDep) -> None:
    """/admin: one of YOLOR_ADMIN_KEYS (401 without, 403 wrong); 403 for everyone when none is set."""
    if not state.admin_keys.enabled:
        raise Forbidden("the admin API is disabled: set YOLOR_ADMIN_KEYS to enable it")
    state.admin_keys.check(_presented(request), what="an admin key", how=HOW)
