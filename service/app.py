"""The application factory: `create_app(settings)`; `app_factory()` for `uvicorn --factory`.

Start-up (lifespan): read the manifest, load the backend, check it against the manifest (refusing a
mismatch), start the batcher and the backend watchdog, then warm up in the background: `/healthz`
answers at once, `/readyz` and the detect routes turn ready after warm-up (and not ready while the
watchdog sees a batch stuck in the backend). Shutdown: refuse new requests (503), let accepted ones
finish, drain the batch queue, and release the backend once no batch is running in it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api import detect, system, v2
from service.auth import ApiKeys
from service.backends import Backend, BackendError, create_backend, load_checked_backend
from service.backends.factory import BackendFactory
from service.batcher import DynamicBatcher
from service.detector import Detector
from service.errors import install_error_handlers
from service.logs import configure_logging
from service.manifest import ModelManifest, load_manifest
from service.metrics import Metrics
from service.middleware import BodySizeLimit, RequestMetrics, UnexpectedErrors
from service.settings import Settings, unknown_variables
from service.state import ServiceState
from service.watchdog import BackendWatchdog

log = logging.getLogger(__name__)


def warm_up(backend: Backend, max_batch_size: int, stop: threading.Event | None = None) -> None:
    """Run every batch size the batcher can form (1..max), checking each output's batch dimension.

    Returns early once `stop` is set (shutdown during warm-up waits for one batch, not all of them).
    """
    for size in range(1, max_batch_size + 1):
        if stop is not None and stop.is_set():
            return
        out = backend.infer(np.zeros((size, *backend.input_shape), dtype=np.float32))
        if out.shape[0] != size:
            raise BackendError(f"warm-up: batch of {size} gave output shape {out.shape}")


async def _load(settings: Settings, backend_factory: BackendFactory) -> tuple[ModelManifest, Backend, int]:
    """The manifest, the backend checked against it, and the largest batch to form."""
    manifest = load_manifest(settings.model_dir)
    backend, max_batch = await asyncio.to_thread(load_checked_backend, settings, manifest, backend_factory)
    log.info("serving %s with %r, batches up to %d", manifest.arch, backend, max_batch)
    return manifest, backend, max_batch


async def _start(state: ServiceState, backend_factory: BackendFactory) -> None:
    settings = state.settings
    state.not_ready_reason = "loading the backend"
    manifest, backend, max_batch = await _load(settings, backend_factory)
    state.manifest, state.backend = manifest, backend
    state.metrics.set_model(
        arch=manifest.arch, backend=backend.name, precision=backend.precision, max_batch=max_batch
    )
    state.pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="yolor-pre")
    state.batcher = DynamicBatcher(
        backend.infer,
        max_batch_size=max_batch,
        max_delay_s=settings.max_delay_ms / 1000,
        queue_size=settings.queue_size,
        metrics=state.metrics,
        workers=backend.concurrency,
    )
    await state.batcher.start()
    state.watchdog = BackendWatchdog(
        state.batcher.inflight_age,
        state.metrics,
        limit_s=settings.watchdog_s,
        on_stall=lambda reason: _set_stalled(state, reason),
        on_recover=lambda: _set_stalled(state, ""),
    )
    state.watchdog.start()
    state.detector = Detector(
        manifest,
        backend,
        state.batcher,
        state.pool,
        state.metrics,
        max_images=settings.max_images_per_request,
        max_pixels=settings.max_image_pixels,
        reduced_decode=settings.jpeg_reduced_decode,
        max_tiles=settings.max_tiles_per_image,
        timeout_s=settings.request_timeout_s,
    )
    if settings.warmup:
        state.not_ready_reason = "warming up"
        state.warmup_task = asyncio.create_task(_warm_up(state, backend, max_batch), name="yolor-warmup")
    else:
        _mark_ready(state)


def _mark_ready(state: ServiceState) -> None:
    state.ready, state.not_ready_reason = True, ""
    state.metrics.ready.set(0 if state.stalled_reason else 1)


def _set_stalled(state: ServiceState, reason: str) -> None:
    state.stalled_reason = reason
    state.metrics.ready.set(1 if state.ready and not reason and not state.shutting_down else 0)


async def _warm_up(state: ServiceState, backend: Backend, max_batch: int) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await asyncio.to_thread(warm_up, backend, max_batch, state.stop_warmup)
        if state.detector is not None and not state.stop_warmup.is_set():
            await state.detector.warm_up(state.settings.preprocess_workers)
    except Exception as e:
        log.exception("warm-up failed; the server stays not ready")
        state.not_ready_reason = f"warm-up failed: {e}"
        return
    log.info("warmed up batch sizes 1..%d in %.2f s; ready", max_batch, loop.time() - started)
    _mark_ready(state)


async def _stop(state: ServiceState) -> None:
    settings = state.settings
    state.ready, state.shutting_down = False, True
    state.metrics.ready.set(0)
    if state.grpc is not None:  # new calls refused; calls in flight finish within the deadline
        await state.grpc.stop(grace_s=settings.request_timeout_s)
    if state.warmup_task is not None:  # not cancelled: its thread must be done before close()
        state.stop_warmup.set()
        await asyncio.gather(state.warmup_task, return_exceptions=True)
    if state.detector is not None and not await state.detector.drain(settings.request_timeout_s):
        log.warning("requests still running after %.1f s; shutting down anyway", settings.request_timeout_s)
    if state.watchdog is not None:
        await state.watchdog.stop()
    idle = True
    if state.batcher is not None:
        idle = await state.batcher.stop(timeout_s=settings.request_timeout_s)
    if state.pool is not None:
        state.pool.shutdown(wait=False, cancel_futures=True)
    if state.backend is not None:
        if idle and state.backend.close(timeout_s=settings.request_timeout_s):
            log.info("stopped")
        else:  # freeing a runtime under a running call corrupts it; the process exit frees it
            log.error("stopped without releasing the backend: a batch is still running in it")


def create_app(settings: Settings | None = None, *, backend_factory: BackendFactory | None = None) -> FastAPI:
    """The app for `settings` (default: read from `YOLOR_*` env vars). Nothing is loaded until start-up.

    `backend_factory(settings, manifest)` replaces `create_backend`, e.g. with a FakeBackend in tests.
    """
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    state = ServiceState(settings=settings, metrics=metrics, api_keys=ApiKeys(settings.api_keys))
    factory = backend_factory or create_backend

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await _start(state, factory)
            if settings.grpc_port is not None:
                from service.v2.grpc_server import GrpcServer

                state.grpc = GrpcServer(state)
                await state.grpc.start(settings.host, settings.grpc_port)
            yield
        finally:
            await _stop(state)

    app = FastAPI(
        title="YOLOR detection service",
        summary="Object detection with YOLOR: dynamic batching, ONNX Runtime / TensorRT / PyTorch backends",
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app, retry_after_s=settings.retry_after_s, on_reject=metrics.reject)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, on_reject=metrics.reject)
    app.add_middleware(UnexpectedErrors)
    routers = (system.router, detect.router, v2.router)
    paths = [route.path for router in routers for route in router.routes]  # type: ignore[attr-defined]
    app.add_middleware(RequestMetrics, metrics=metrics, paths=paths)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After", "X-Detections"],
        )
    for router in routers:
        app.include_router(router)
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory service.app:app_factory`: settings from the environment, logging set up."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if unknown := unknown_variables():
        log.warning("ignoring environment variables that name no setting: %s", ", ".join(unknown))
    return create_app(settings)
