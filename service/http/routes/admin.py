"""`POST /admin/reload`: swap the served model without a restart (`service.core.reload`), admin keys only."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from service.http.deps import StateDep, require_admin_key
from service.http.schemas import ErrorBody

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: Path | None = Field(
        None, description="the model folder to serve from now on (default: the current one, re-read)"
    )


class ReloadResponse(BaseModel):
    status: str = "reloaded"
    model_dir: str
    arch: str
    exported_at: str
    previous_model_dir: str
    load_s: float = Field(description="manifest read, backend loaded and checked against it")
    warmup_s: float = Field(description="every batch size run once, before the switch")
    retire_s: float = Field(description="the old model finishing its requests, then closed")
    previous_released: bool = Field(description="the old backend was closed (false: a batch still ran in it)")


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={status: {"model": ErrorBody} for status in (400, 401, 403, 409, 413, 422)},
)
async def reload(state: StateDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load, check and warm up a model beside the serving one, then switch to it; the old one finishes
    the requests it took and is closed. 422 (the old model still serving) when the new one fails,
    409 while another reload runs, before the server is ready, or with several worker processes."""
    done = await state.reloads.reload(body.model_dir if body is not None else None)
    (new,), (old,) = done.loaded, done.retired
    return ReloadResponse(
        model_dir=str(new.model_dir),
        arch=new.manifest.arch,
        exported_at=new.manifest.exported_at,
        previous_model_dir=str(old.model_dir),
        load_s=round(done.load_s, 3),
        warmup_s=round(done.warmup_s, 3),
        retire_s=round(done.retire_s, 3),
        previous_released=done.released,
    )
