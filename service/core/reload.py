"""Zero-downtime model reload (`POST /admin/reload`, SIGHUP): load, check and warm up a model beside
the one serving, then switch.

The new model (the same folder re-read, or another) is loaded with the same settings, checked
against its manifest (as at start-up) and warmed up at every batch size while the old one keeps
answering. If anything fails the old model keeps serving and the caller gets the reason. Otherwise
`state.model` is replaced in one assignment on the event loop: a request takes the model once, when
it starts, so it runs on the old model or on the new one, never on both; the old model finishes the
requests it took, its batcher drains what it accepted, and its backend is closed.

One reload at a time: a request for another one meanwhile is refused (409), a SIGHUP meanwhile
re-reads the folder once the running one is done (signals while one waits coalesce).

With several uvicorn worker processes each holds its own model, so a request can only reload the
worker it reaches: there, SIGHUP to the parent process is the reload (uvicorn replaces the workers
one by one, each ready before the old one stops).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from service.backends.factory import BackendFactory
from service.core.errors import ReloadFailed, ReloadUnavailable
from service.core.model import LoadedModel, load_model, return_freed_memory
from service.core.state import ServiceState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reloaded:
    model: LoadedModel
    previous_dir: Path
    load_s: float
    warmup_s: float
    retire_s: float
    previous_released: bool


class Reloader:
    def __init__(self, state: ServiceState, factory: BackendFactory) -> None:
        self._state, self._factory = state, factory
        self._lock = asyncio.Lock()
        self._signal_waiting = False  # a SIGHUP reload waits for the one running

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def reload(self, model_dir: Path | None = None) -> Reloaded:
        """Serve `model_dir` (default: the current model's folder, re-read) once it is loaded, checked
        and warm. Raises ReloadUnavailable (not ready, shutting down, a reload running) or
        ReloadFailed (the old model still serving)."""
        if self.busy:
            raise ReloadUnavailable("a reload is already in progress")
        async with self._lock:
            return await self._reload(model_dir)

    async def reload_on_signal(self) -> None:
        """SIGHUP: re-read the served folder once the reload running now (if any) is done; signals
        while one is already waiting are that one. The outcome is logged (nobody to answer)."""
        if self._signal_waiting:
            return
        self._signal_waiting = True
        try:
            async with self._lock:
                self._signal_waiting = False  # a signal from now on asks for another read
                done = await self._reload(None)
        except (ReloadFailed, ReloadUnavailable) as e:
            log.error("SIGHUP reload: %s", e.message)
            return
        log.info("SIGHUP reload of %s done in %.2f s", done.model.model_dir, done.load_s + done.warmup_s)

    async def _reload(self, model_dir: Path | None) -> Reloaded:
        """`reload` with the lock held."""
        state = self._state
        if not state.readiness.ready or state.model is None:
            raise ReloadUnavailable(f"cannot reload now: {state.readiness.why_not or 'not ready'}")
        old = state.model
        target = Path(model_dir) if model_dir is not None else old.model_dir
        started = time.monotonic()
        new = await self._load(target, old)
        loaded_at = time.monotonic()
        await self._warm(new, target, old)
        warm_at = time.monotonic()
        if state.readiness.shutting_down:  # began while this one loaded: it closes the serving model only
            await new.close(state.settings.request_timeout_s)  # the process exits soon: no memory hand-back
            raise ReloadUnavailable("the server began shutting down during the reload")
        state.serve(new)  # the switch: requests from now on take the new model
        state.retiring.add(old)
        state.metrics.reloads.labels(result="ok").inc()
        state.metrics.last_reload.set(time.time())
        log.info("reloaded: serving %s (was %s); retiring the old model", target, old.model_dir)
        try:
            released = await old.retire(state.settings.request_timeout_s)
            if released:
                await asyncio.to_thread(return_freed_memory)
        finally:
            state.retiring.discard(old)
        return Reloaded(
            new,
            old.model_dir,
            load_s=loaded_at - started,
            warmup_s=warm_at - loaded_at,
            retire_s=time.monotonic() - warm_at,
            previous_released=released,
        )

    async def _load(self, target: Path, old: LoadedModel) -> LoadedModel:
        state = self._state
        assert state.pool is not None  # set at start-up, before any model
        try:
            return await load_model(
                state.settings,
                target,
                self._factory,
                metrics=state.metrics,
                pool=state.pool,
                name=old.name,
                version=old.version,
            )
        except Exception as e:
            raise self._failed(target, old, f"{type(e).__name__}: {e}") from e

    async def _warm(self, new: LoadedModel, target: Path, old: LoadedModel) -> None:
        """Every batch size through the new backend, and its post-processing; closes it on failure."""
        try:
            await new.warm_up(decode_threads=0)
        except Exception as e:
            if await new.close(self._state.settings.request_timeout_s):
                await asyncio.to_thread(return_freed_memory)
            raise self._failed(target, old, f"warm-up failed: {type(e).__name__}: {e}") from e

    def _failed(self, target: Path, old: LoadedModel, reason: str) -> ReloadFailed:
        self._state.metrics.reloads.labels(result="failed").inc()
        log.error("reload of %s failed (%s); still serving %s", target, reason, old.model_dir)
        return ReloadFailed(f"reload of {target} failed, still serving {old.model_dir}: {reason}")
