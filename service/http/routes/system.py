"""Health, readiness, metrics, the model description (and its sample image), and the page at `/`."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from service.core.errors import NotFound, NotReady
from service.core.model import LoadedModel
from service.core.options import ModelChoice
from service.core.state import ServiceState
from service.http.deps import StateDep, require_api_key
from service.http.schemas import ErrorBody, ModelInfo, Status

router = APIRouter(tags=["system"])

# An image the model finds things in, next to model.json (the demo model ships one; see train/demo_sample.py).
SAMPLE_FILE = "sample.jpg"
SAMPLE_PATH = "/model/sample"
AUTH_ERRORS: dict[int | str, dict[str, object]] = {401: {"model": ErrorBody}, 403: {"model": ErrorBody}}


@cache
def _page() -> str:
    return resources.files("service.http").joinpath("web/index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """A self-contained page: what is served (GET /model), drop an image or try the model's sample and
    see the boxes, the table and the timing (it calls POST /detect)."""
    return HTMLResponse(_page())


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """The process is alive (says nothing about the model)."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorBody}})
async def readyz(state: StateDep) -> Status:
    """200 once the backend is loaded and warmed up; 503 before and while shutting down."""
    state.readiness.check()
    return Status(status="ready")


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep, request: Request) -> Response:
    """The yolor_* metrics: Prometheus text, or OpenMetrics (with exemplars) when `Accept` asks for it."""
    body, content_type = state.metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)


@router.get(
    "/model",
    response_model=ModelInfo,
    dependencies=[Depends(require_api_key)],
    responses={**AUTH_ERRORS, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def model(state: StateDep, choice: Annotated[ModelChoice, Query()]) -> ModelInfo:
    """A loaded model's manifest plus how it is served (backend, precision, device, batching): the
    default model unless `model` (and `version`) name another."""
    loaded = _loaded(state, choice)
    return ModelInfo(
        **loaded.manifest.model_dump(),
        backend=loaded.backend.name,
        precision=loaded.backend.precision,
        device=loaded.backend.device,
        max_batch_size=loaded.batcher.max_batch_size,
        max_delay_ms=loaded.batcher.max_delay_s * 1000,
        sample_image=SAMPLE_PATH if _sample_file(loaded.model_dir) else None,
    )


def _loaded(state: ServiceState, choice: ModelChoice) -> LoadedModel:
    """The model `choice` names (503 before any is loaded, 404 when it names none loaded)."""
    if not state.models.names() and not state.readiness.ready:
        raise NotReady(f"not ready: {state.readiness.why_not}")
    return state.models.get(choice.model, choice.version)


def _sample_file(model_dir: Path) -> Path | None:
    path = model_dir / SAMPLE_FILE
    return path if path.is_file() else None


@router.get(
    SAMPLE_PATH,
    response_class=FileResponse,
    dependencies=[Depends(require_api_key)],
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "the image"},
        **AUTH_ERRORS,
        404: {"model": ErrorBody},
    },
)
async def model_sample(state: StateDep, choice: Annotated[ModelChoice, Query()]) -> FileResponse:
    """A JPEG the served model detects things in (`sample.jpg` in the model folder); 404 when it has none.

    `GET /model` says whether there is one (`sample_image`)."""
    path = _sample_file(_loaded(state, choice).model_dir)
    if path is None:
        raise NotFound("the served model has no sample image")
    return FileResponse(path, media_type="image/jpeg")
