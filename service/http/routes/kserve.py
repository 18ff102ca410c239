"""KServe v2 / Open Inference Protocol over HTTP (Triton-compatible): health, metadata, Triton's
model config, and infer on the two v2 models of each loaded model (`service.kserve.models`: `<name>`
and `<name>_image`; a model folder alone is `YOLOR_V2_MODEL_NAME`, default `yolor`, version 1).

Infer requests go through the same batcher, queue limit, deadline, API keys and body limit as
`/detect`; errors come back as the protocol's `{"error": "..."}` with the same statuses
(`service.core.errors`). A model or version that is not loaded is a 404 listing the loaded ones.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.core.errors import InvalidTensor
from service.core.reload import Switched
from service.core.state import ServiceState
from service.http.deps import API_KEY_SECURITY, StateDep, check_api_key, require_admin_key, require_api_key
from service.http.direct import DirectRoute, client_disconnected, json_body, read_lenient_json
from service.http.schemas import V2ErrorBody
from service.kserve import inference, model_repository, models
from service.kserve.tensors import (
    HEADER_LENGTH,
    TensorError,
    encode_infer_response,
    parse_infer_request,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2ErrorBody} for status in (400, 401, 403, 404, 413, 503, 504)
}
router = APIRouter(prefix="/v2", tags=["kserve-v2"], responses=ERRORS)
# infer reads its own request (service.http.direct), as the detect routes: the hot path.
infer_router = APIRouter(prefix="/v2", tags=["kserve-v2"], responses=ERRORS, route_class=DirectRoute)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(state: StateDep) -> dict[str, bool]:
    state.readiness.check()
    return {"ready": True}


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return models.server_metadata()


# Triton's statistics extension (declared before `/models/{name}`, which would take "stats"): every
# model, one, or one version; the name and version are path segments only (no query parameters).
@router.get("/models/stats", dependencies=[Depends(require_api_key)])
async def all_statistics(request: Request, state: StateDep) -> dict[str, Any]:
    return inference.statistics_json(state, request.app.state.kserve_statistics, None, None)


@router.get("/models/{name}/stats", dependencies=[Depends(require_api_key)])
async def model_statistics(request: Request, state: StateDep, name: str) -> dict[str, Any]:
    return inference.statistics_json(state, request.app.state.kserve_statistics, name, None)


@router.get("/models/{name}/versions/{version}/stats", dependencies=[Depends(require_api_key)])
async def version_statistics(request: Request, state: StateDep, name: str, version: str) -> dict[str, Any]:
    return inference.statistics_json(state, request.app.state.kserve_statistics, name, version)


@router.get("/models/{name}", dependencies=[Depends(require_api_key)])
@router.get("/models/{name}/versions/{version}", dependencies=[Depends(require_api_key)])
async def model_metadata(state: StateDep, name: str, version: str | None = None) -> dict[str, Any]:
    return models.metadata(inference.target(state, name, version).served(state))


@router.get("/models/{name}/ready", dependencies=[Depends(require_api_key)])
@router.get("/models/{name}/versions/{version}/ready", dependencies=[Depends(require_api_key)])
async def model_ready(state: StateDep, name: str, version: str | None = None) -> dict[str, Any]:
    inference.target(state, name, version).loaded(state)  # 404 until loaded (on demand too)
    state.readiness.check()
    return {"name": name, "ready": True}


@router.get("/models/{name}/config", dependencies=[Depends(require_api_key)])
@router.get("/models/{name}/versions/{version}/config", dependencies=[Depends(require_api_key)])
async def model_config(state: StateDep, name: str, version: str | None = None) -> dict[str, Any]:
    return inference.config_json(state, name, version)


# Triton's model repository extension (service.kserve.model_repository): admin keys only.
class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository_name: str = Field("", description="ignored: the server has one repository")
    ready: bool = Field(False, description="only the models ready for inference")


class RepositoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] = Field(default_factory=dict)


class Loaded(BaseModel):
    name: str
    versions: list[int] = Field(description="the versions served now, newest first (none after an unload)")
    retired: list[int] = Field(description="the versions replaced or unloaded, which finished their requests")
    load_s: float
    warmup_s: float
    retire_s: float
    released: bool = Field(description="every retired backend was closed (false: a batch still ran in one)")

    @classmethod
    def of(cls, name: str, done: Switched) -> Loaded:
        return cls(
            name=name,
            versions=sorted((m.version for m in done.loaded), reverse=True),
            retired=sorted((m.version for m in done.retired), reverse=True),
            load_s=round(done.load_s, 3),
            warmup_s=round(done.warmup_s, 3),
            retire_s=round(done.retire_s, 3),
            released=done.released,
        )


ADMIN = [Depends(require_admin_key)]
REPOSITORY_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": V2ErrorBody} for s in (409, 422)}


def _optional(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {**json_body(model), "required": False}}


@router.post("/repository/index", dependencies=ADMIN, openapi_extra=_optional(IndexRequest))
async def repository_index(request: Request, state: StateDep) -> list[dict[str, str]]:
    """Every model and version of the repository: `READY`, `LOADING` or `UNAVAILABLE` and why."""
    body = await read_lenient_json(IndexRequest, request)
    return model_repository.index(state, ready=body is not None and body.ready)


@router.post(
    "/repository/models/{name}/load",
    dependencies=ADMIN,
    responses=REPOSITORY_ERRORS,
    openapi_extra=_optional(RepositoryRequest),
)
async def repository_load(request: Request, state: StateDep, name: str) -> Loaded:
    """Load `name` (or load it again) at the versions its policy serves, each checked and warmed up
    beside the serving ones, then switched to: no request fails. 422 when a version fails to load
    (nothing changed), 404 when the repository has no such model, 409 before the server is ready."""
    body = await read_lenient_json(RepositoryRequest, request)
    done = await model_repository.load(state, name, body.parameters if body is not None else {})
    return Loaded.of(name, done)


@router.post(
    "/repository/models/{name}/unload",
    dependencies=ADMIN,
    responses=REPOSITORY_ERRORS,
    openapi_extra=_optional(RepositoryRequest),
)
async def repository_unload(request: Request, state: StateDep, name: str) -> Loaded:
    """Stop serving every version of `name` once the requests holding one have finished; its memory
    is handed back. 404 when it is not loaded."""
    body = await read_lenient_json(RepositoryRequest, request)
    done = await model_repository.unload(state, name, body.parameters if body is not None else {})
    return Loaded.of(name, done)


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidTensor(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None


def _infer_openapi(*, versioned: bool) -> dict[str, Any]:
    names = ("name", "version") if versioned else ("name",)
    return {
        "parameters": [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
        ],
        "requestBody": {
            "required": True,
            "description": "the protocol's JSON infer request, optionally followed by binary tensor data "
            f"(its JSON length in {HEADER_LENGTH})",
            "content": {"application/json": {}, "application/octet-stream": {}},
        },
        "security": API_KEY_SECURITY,
    }


@infer_router.post("/models/{name}/infer", openapi_extra=_infer_openapi(versioned=False))
@infer_router.post("/models/{name}/versions/{version}/infer", openapi_extra=_infer_openapi(versioned=True))
async def infer(request: Request) -> Response:
    """Infer on the exported graph's tensors; the rows of a batch go through the dynamic batcher.
    A `DirectRoute` (as the detect routes): API key, model name, then the body."""
    started = time.monotonic()
    state: ServiceState = request.app.state.service
    await check_api_key(request, state)
    name = request.path_params["name"]
    at = inference.target(state, name, request.path_params.get("version"))  # 404 before the body
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise InvalidTensor(f"Content-Encoding {encoding!r} is not supported (send identity)")
    body = await request.body()
    try:
        parsed = parse_infer_request(body, _header_length(request))
    except TensorError as e:
        raise InvalidTensor(str(e)) from None
    disconnected = await client_disconnected(request)
    book = request.app.state.kserve_statistics
    ran = await inference.infer(state, book, at, parsed, started=started, disconnected=disconnected)
    content, header_length = encode_infer_response(name, str(ran.version), parsed, ran.outputs)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
    )
