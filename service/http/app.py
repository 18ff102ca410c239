"""The application factory: `create_app(settings)`; `app_factory()` for `uvicorn --factory`.

Start-up (lifespan): read the manifest, load the backend, check it against the manifest (refusing a
mismatch), start the batcher and the backend watchdog, then warm up in the background: `/healthz`
answers at once, `/readyz` and the detect routes turn ready after warm-up (and not ready while the
watchdog sees a batch stuck in the backend). A reload (`service.core.reload`: POST /admin/reload, SIGHUP)
replaces the loaded model while serving. Shutdown: refuse new requests (503), let accepted ones
finish, drain the batch queue, and release the backend once no batch is running in it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.backends.factory import BackendFactory, create_backend
from service.core import repository
from service.core.auth import ApiKeys
from service.core.metrics import Metrics
from service.core.model import LoadedModel, load_model
from service.core.reload import Reloader
from service.core.state import ServiceState
from service.core.watchdog import BackendWatchdog
from service.http.errors import install_error_handlers
from service.http.middleware import BodySizeLimit, RequestIds, RequestMetrics, Traces, UnexpectedErrors
from service.http.routes import admin, detect, kserve, system, video
from service.http.routes import streams as streams_routes
from service.kserve.statistics import StatisticsBook
from service.logs import configure_logging
from service.settings import Settings, unknown_variables
from service.streams.manager import StreamManager
from service.tracing import TRACE_HEADERS, start_tracing

if TYPE_CHECKING:  # grpc is imported only when the gRPC port is opened
    from service.kserve.grpc_server import GrpcServer

log = logging.getLogger(__name__)


async def _start(state: ServiceState, backend_factory: BackendFactory) -> None:
    settings = state.settings
    state.readiness.starting("loading the backend")
    state.pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="yolor-pre")
    wanted, default, problems = repository.startup(settings)
    for folder, reason in problems.items():
        log.warning("model repository: %s is not a usable model: %s", folder, reason)
    state.models.default = default
    for want in wanted:
        state.serve(
            await load_model(
                settings,
                want.path,
                backend_factory,
                metrics=state.metrics,
                pool=state.pool,
                name=want.name,
                version=want.version,
            )
        )
    state.watchdog = BackendWatchdog(
        state.inflight_age,
        state.metrics,
        limit_s=settings.watchdog_s,
        on_stall=state.readiness.stall,
        on_recover=lambda: state.readiness.stall(""),
    )
    state.watchdog.start()
    state.reloader = Reloader(state, backend_factory)
    if settings.warmup:
        state.readiness.starting("warming up")
        state.warmup_task = asyncio.create_task(_warm_up(state, list(state.models)), name="yolor-warmup")
    else:
        state.readiness.warmed()


async def _warm_up(state: ServiceState, models: list[LoadedModel]) -> None:
    loop = asyncio.get_running_loop()
    for model in models:
        started = loop.time()
        try:
            await model.warm_up(decode_threads=state.settings.preprocess_workers, stop=state.stop_warmup)
        except Exception as e:
            log.exception("warm-up of %s failed; the server stays not ready", model.name)
            state.readiness.starting(f"warm-up of {model.name} version {model.version} failed: {e}")
            return
        log.info(
            "%s version %d: warmed up batch sizes 1..%d in %.2f s",
            model.name,
            model.version,
            model.max_batch,
            loop.time() - started,
        )
    log.info("ready")
    state.readiness.warmed()


async def _stop(state: ServiceState, grpc: GrpcServer | None) -> None:
    settings = state.settings
    state.readiness.shut_down()
    if grpc is not None:  # new calls refused; calls in flight finish within the deadline
        await grpc.stop(grace_s=settings.request_timeout_s)
    if state.warmup_task is not None:  # not cancelled: its thread must be done before close()
        state.stop_warmup.set()
        await asyncio.gather(state.warmup_task, return_exceptions=True)
    if state.watchdog is not None:
        await state.watchdog.stop()
    # The serving model and any a reload is retiring: each finishes its requests, then is closed.
    models = [*state.retiring, *state.models]
    released = await asyncio.gather(*(m.retire(settings.request_timeout_s) for m in models))
    if state.pool is not None:
        state.pool.shutdown(wait=False, cancel_futures=True)
    if all(released):
        log.info("stopped")
    else:  # freeing a runtime under a running call corrupts it; the process exit frees it
        log.error("stopped without releasing the backend: a batch is still running in it")


def _on_sighup(state: ServiceState) -> Callable[[], None] | None:
    """Install SIGHUP -> reload of the model folder (single-process servers, main thread only);
    returns the uninstaller, or None where no handler could be installed."""
    if state.settings.workers > 1 or not hasattr(signal, "SIGHUP"):
        return None  # the uvicorn parent process handles SIGHUP: it replaces the workers
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = loop.create_task(state.reloads.reload_on_signal(), name="yolor-sighup-reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError):  # not the main thread (a test's server thread)
        return None

    def uninstall() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return uninstall


def _end_listeners_on_exit(streams: StreamManager) -> Callable[[], None] | None:
    """SIGTERM / SIGINT: first end the streams' listeners (SSE, MJPEG: endless responses that would
    hold uvicorn's graceful shutdown for its whole timeout), then the handler that was there
    (uvicorn's). Main thread only; returns the uninstaller, or None where none was installed."""
    if threading.current_thread() is not threading.main_thread():
        return None  # a test's server thread
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(streams.end_listeners)
        prior = previous[signum]
        if callable(prior):
            prior(signum, frame)
        elif prior == signal.SIG_DFL:  # nobody else handles it: what the signal would have done
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)

    def uninstall() -> None:
        for signum, prior in previous.items():
            signal.signal(signum, prior)

    return uninstall


def create_app(settings: Settings | None = None, *, backend_factory: BackendFactory | None = None) -> FastAPI:
    """The app for `settings` (default: read from `YOLOR_*` env vars). Nothing is loaded until start-up.

    `backend_factory(settings, manifest)` replaces `create_backend`, e.g. with a FakeBackend in tests.
    """
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    state = ServiceState(
        settings=settings,
        metrics=metrics,
        api_keys=ApiKeys(settings.api_keys),
        admin_keys=ApiKeys(settings.admin_keys),
        tracing=start_tracing(settings.tracing),
    )
    factory = backend_factory or create_backend

    statistics = StatisticsBook()  # KServe v2 statistics, HTTP and gRPC alike

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await _start(state, factory)
            await streams.start()  # the streams kept from the last run reopen
            if settings.grpc_port is not None:
                from service.kserve.grpc_server import GrpcServer

                app.state.grpc = GrpcServer(state, statistics)
                await app.state.grpc.start(settings.host, settings.grpc_port)
            uninstallers = [_on_sighup(state), _end_listeners_on_exit(streams)]
            try:
                yield
            finally:
                for uninstall in uninstallers:
                    if uninstall is not None:
                        uninstall()
        finally:
            await streams.close()
            await _stop(state, app.state.grpc)
            if state.tracing is not None:
                await asyncio.to_thread(state.tracing.shutdown)

    app = FastAPI(
        title="YOLOR detection service",
        summary="Object detection with YOLOR: dynamic batching, ONNX Runtime / TensorRT / PyTorch backends",
        lifespan=lifespan,
    )
    app.state.service = state
    app.state.streams = streams = StreamManager(settings, state)
    app.state.kserve_statistics = statistics
    app.state.grpc = None  # the gRPC server while its port is open
    install_error_handlers(app, retry_after_s=settings.retry_after_s, on_reject=metrics.reject)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        on_reject=metrics.reject,
        path_limits={video.VIDEO_PATH: settings.max_video_bytes},
    )
    app.add_middleware(UnexpectedErrors)
    routers = (
        system.router, detect.router, video.router, streams_routes.router, kserve.router, kserve.infer_router,
        admin.router,
    )  # fmt: skip
    paths = [route.path for router in routers for route in router.routes]  # type: ignore[attr-defined]
    app.add_middleware(RequestMetrics, metrics=metrics, paths=paths)
    if state.tracing is not None:
        app.add_middleware(Traces, tracing=state.tracing)
    app.add_middleware(RequestIds)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", *TRACE_HEADERS],
            expose_headers=["Retry-After", "X-Detections", "X-Request-ID", *TRACE_HEADERS],
        )
    for router in routers:
        app.include_router(router)
    return app


# The serving process collects its young garbage every 50,000 allocations, not 700: each request
# allocates a few thousand objects, nearly all freed by reference counting, and the default
# thresholds ran the cycle collector several times a request (its cost measured: docs/benchmarks.md,
# "The event loop's share"); the middle generation every 20 young collections,
# the oldest every 100 middle ones (and only when it has grown by a quarter: CPython's own rule).
GC_THRESHOLDS = (50_000, 20, 100)


def app_factory() -> FastAPI:
    """For `uvicorn --factory service.http.app:app_factory` (what `yolor serve` runs in each worker):
    settings from the environment, logging set up, the garbage collector's thresholds raised."""
    gc.set_threshold(*GC_THRESHOLDS)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if unknown := unknown_variables():
        log.warning("ignoring environment variables that name no setting: %s", ", ".join(unknown))
    return create_app(settings)
