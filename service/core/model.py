"""One loaded model and everything that serves it: its folder and manifest, the backend checked
against it, its batcher and detector, and the requests now using it.

A request takes the current model once (`use`) and keeps it to the end, so all of its images run on
one model, whatever is reloaded meanwhile. A model being replaced is `retire`d: it waits until the
requests that took it are done, then its batcher drains what it accepted and its backend is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.backends import Backend, BackendError
from service.backends.factory import BackendFactory, load_checked_backend
from service.core.batcher import DynamicBatcher
from service.core.detector import Detector
from service.core.metrics import Metrics, ModelMetrics
from service.manifest import ModelManifest, load_manifest
from service.settings import Settings
from service.tracing import detach

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    model_dir: Path
    manifest: ModelManifest
    backend: Backend
    batcher: DynamicBatcher
    detector: Detector
    max_batch: int
    name: str = "yolor"  # what requests call it (service.core.model_set)
    version: int = 1
    users: int = 0
    last_used: float = 0.0  # time.monotonic() of the last request that took it
    on_demand: bool = False  # loaded for a request (YOLOR_LOAD_ON_DEMAND): it may give way to another
    memory_mb: float = 0.0  # resident memory its load and warm-up added (0: not measured)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: asyncio.Future[bool] | None = None

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def metrics(self) -> ModelMetrics:
        """What this model records (labelled with its name and version)."""
        return self.detector.metrics

    @contextlib.contextmanager
    def use(self) -> Iterator[Detector]:
        """Hold this model for one request (its detector); `drain` waits for every holder."""
        self.users += 1
        self.last_used = time.monotonic()
        self._idle.clear()
        try:
            yield self.detector
        finally:
            self.users -= 1
            if self.users == 0:
                self._idle.set()

    async def warm_up(self, *, decode_threads: int, stop: threading.Event | None = None) -> None:
        """Every batch size the batcher can form through the backend (stopping early once `stop` is
        set: a shutdown during warm-up waits for one batch, not all), then the detector's decode in
        `decode_threads` pool threads (0 on a reload: the shared pool is warm and busy) and its
        post-processing."""
        await asyncio.to_thread(_warm_up_backend, self.backend, self.max_batch, stop)
        if stop is None or not stop.is_set():
            await self.detector.warm_up(decode_threads)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request holds this model (True), or `timeout_s` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            return False
        return True

    async def close(self, timeout_s: float) -> bool:
        """Stop the batcher (finishing what it accepted) and release the backend once no batch runs
        in it; False when a batch is still running at the timeout (the backend is then not freed:
        freeing a runtime under a running call corrupts it, the process exit frees it). Closing
        twice (a shutdown during a reload's retirement) waits for the first close."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(timeout_s))
        return await asyncio.shield(self._closing)

    async def _close(self, timeout_s: float) -> bool:
        detach()  # the admin request that unloads it may end first
        idle = await self.batcher.stop(timeout_s=timeout_s)
        if idle and self.backend.close(timeout_s=timeout_s):
            return True
        log.error("%s: a batch is still running in the backend; it is not released", self.model_dir)
        return False

    async def retire(self, timeout_s: float) -> bool:
        """`drain`, then `close`, each within `timeout_s`; whether the backend was released."""
        if not await self.drain(timeout_s):
            log.warning("%s: requests still running after %.1f s; closing anyway", self.model_dir, timeout_s)
        return await self.close(timeout_s)


def return_freed_memory() -> None:
    """Collect garbage, then hand the C heap's free pages back to the OS (glibc `malloc_trim`), after
    a model was closed in a server that goes on (a reload; at shutdown the process exit does it).

    A closed runtime frees its buffers into the malloc arenas of the threads that used them, where
    they stay as resident memory: without this, each reload left more resident (docs/benchmarks.md,
    the reload benchmark). A no-op where the C library is not glibc."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def _warm_up_backend(backend: Backend, max_batch_size: int, stop: threading.Event | None) -> None:
    """Run every batch size the batcher can form (1..max), checking each output's batch dimension.

    Returns early once `stop` is set (shutdown during warm-up waits for one batch, not all of them).
    """
    for size in range(1, max_batch_size + 1):
        if stop is not None and stop.is_set():
            return
        out = backend.infer(np.zeros((size, *backend.input_shape), dtype=np.float32))
        if out.shape[0] != size:
            raise BackendError(f"warm-up: batch of {size} gave output shape {out.shape}")


async def load_model(
    settings: Settings,
    model_dir: Path,
    factory: BackendFactory,
    *,
    metrics: Metrics,
    pool: Executor,
    name: str | None = None,
    version: int = 1,
) -> LoadedModel:
    """The model in `model_dir` with a backend checked against its manifest and a started batcher
    (not warmed up), called `name` (default: YOLOR_V2_MODEL_NAME) at `version`. Raises
    ManifestError, BackendError (and what the factory raises)."""
    manifest = load_manifest(model_dir)
    for_model = (
        settings if model_dir == settings.model_dir else settings.model_copy(update={"model_dir": model_dir})
    )
    backend, max_batch = await asyncio.to_thread(load_checked_backend, for_model, manifest, factory)
    log.info("loaded %s (%s) with %r, batches up to %d", model_dir, manifest.arch, backend, max_batch)
    name = settings.v2_model_name if name is None else name
    recorded = metrics.for_model(name, version)
    batcher = DynamicBatcher(
        backend.infer,
        max_batch_size=max_batch,
        max_delay_s=settings.max_delay_ms / 1000,
        queue_size=settings.queue_size,
        metrics=recorded,
        workers=backend.concurrency,
        lookahead=1 if backend.accelerator else 0,  # the ready batch: GPUs only
        background_alone=not backend.accelerator,  # stream frames one at a time, beside no request
        trace_attributes={
            "yolor.model": name,
            "yolor.model.version": version,
            "yolor.arch": manifest.arch,
            "yolor.backend": backend.name,
            "yolor.precision": backend.precision,
            "yolor.device": backend.device,
            "yolor.input_size": manifest.input_size,
        },
    )
    await batcher.start()
    detector = Detector(
        manifest,
        backend,
        batcher,
        pool,
        recorded,
        max_images=settings.max_images_per_request,
        max_pixels=settings.max_image_pixels,
        reduced_decode=settings.jpeg_reduced_decode,
        max_tiles=settings.max_tiles_per_image,
        timeout_s=settings.request_timeout_s,
    )
    return LoadedModel(model_dir, manifest, backend, batcher, detector, max_batch, name, version)
