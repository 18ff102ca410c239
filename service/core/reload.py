"""Changing the loaded models while serving, with no failed request: `POST /admin/reload` and SIGHUP
(re-read), and the model repository's load and unload (Triton's repository extension, HTTP and gRPC).

Every change is one switch: the new models (a folder re-read, another folder, or the versions a
repository model's policy serves now) are loaded with the same settings, checked against their
manifests (as at start-up) and warmed up at every batch size while the old ones keep answering. If
any fails, the old ones keep serving and the caller gets the reason. Otherwise the model set is
changed in one step on the event loop (no await between its assignments): a request takes its model
once, when it starts, so it runs on an old model or a new one, never on both; the old ones finish
the requests they took, their batchers drain what they accepted, their backends are closed and the
freed memory is handed back.

One change at a time: `/admin/reload` while another runs is refused (409); a repository load or
unload waits for the one running; a SIGHUP meanwhile re-reads once the running one is done (signals
while one waits coalesce).

With several uvicorn worker processes each holds its own models, so a request can only change the
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
from service.core.errors import Overloaded, ReloadFailed, ReloadUnavailable, UnknownModel
from service.core.model import LoadedModel, load_model, return_freed_memory
from service.core.repository import ModelVersion, RepositoryError, scan
from service.core.state import ServiceState
from service.host import resident_mb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Switched:
    """What one change did: the models it loaded and those it retired (replaced or unloaded)."""

    loaded: list[LoadedModel]
    retired: list[LoadedModel]
    load_s: float
    warmup_s: float
    retire_s: float
    released: bool  # every retired backend was closed (False: a batch still ran in one)


class Reloader:
    def __init__(self, state: ServiceState, factory: BackendFactory) -> None:
        self._state, self._factory = state, factory
        self._lock = asyncio.Lock()
        self._signal_waiting = False  # a SIGHUP re-read waits for the change running
        self.loading: set[str] = set()  # models being loaded now (the repository index says LOADING)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def reload(self, model_dir: Path | None = None) -> Switched:
        """The default model's served version from `model_dir` (default: its folder, re-read), once
        loaded, checked and warm. Raises ReloadUnavailable (not ready, shutting down, a change
        running) or ReloadFailed (the old model still serving)."""
        self._single_process()
        if self.busy:
            raise ReloadUnavailable("a reload is already in progress")
        async with self._lock:
            old = self._state.model
            if old is None:
                raise ReloadUnavailable(f"cannot reload now: {self._why_not() or 'no default model loaded'}")
            target = Path(model_dir) if model_dir is not None else old.model_dir
            return await self._switch(
                old.name, [ModelVersion(old.name, old.version, target)], keep_others=True
            )

    async def load(self, name: str) -> Switched:
        """Load (or load again) `name` at the versions its policy serves now, from the repository
        (from its folder when the server has none): new versions added, loaded ones replaced by a
        fresh read, versions the policy no longer serves unloaded. UnknownModel when the repository
        has no such model; ReloadFailed (nothing changed) when a version fails."""
        self._single_process()
        async with self._lock:
            return await self._switch(name, self._versions(name), keep_others=False)

    async def unload(self, name: str) -> Switched:
        """Stop serving every version of `name`; requests holding one finish first. UnknownModel
        when it is not loaded."""
        self._single_process()
        async with self._lock:
            if not self._state.models.versions(name):
                raise UnknownModel(f"model {name!r} is not loaded; models: {self._state.models.listing()}")
            return await self._switch(name, [], keep_others=False)

    async def load_on_demand(self, name: str, version: int | None) -> None:
        """A request named `name` (at `version`), which is not loaded: load it from the repository
        (YOLOR_LOAD_ON_DEMAND), first unloading the least recently used models loaded on demand
        that no request holds while YOLOR_MAX_MODELS would be exceeded, then, once it is measured,
        while YOLOR_MODEL_MEMORY_MB is. UnknownModel when the repository has no such model or
        version; Overloaded (503, retry) when no model can give way."""
        async with self._lock:
            if self._state.models.find(name, version) is not None:
                return  # loaded meanwhile, for another request
            wanted = self._versions(name)
            if version is not None and version not in {w.version for w in wanted}:
                raise UnknownModel(f"model {name!r} version {version} is not one its version policy serves")
            limit = self._state.settings.max_models
            if limit is not None and len(wanted) > limit:
                raise ReloadFailed(
                    f"{name}: its version policy serves {len(wanted)} versions, "
                    f"more than YOLOR_MAX_MODELS={limit}"
                )
            while limit is not None and len(list(self._state.models)) + len(wanted) > limit:
                await self._give_way(name, f"YOLOR_MAX_MODELS={limit}")
            # a new version of a pinned model stays pinned
            pinned = any(not m.on_demand for m in self._state.models.held(name))
            before = resident_mb()
            done = await self._switch(name, wanted, keep_others=False)
            added = max(0.0, resident_mb() - before) / max(1, len(done.loaded))
            for model in done.loaded:
                model.on_demand, model.memory_mb, model.last_used = not pinned, added, time.monotonic()
            budget = self._state.settings.model_memory_mb
            while budget is not None and sum(m.memory_mb for m in self._state.models) > budget:
                try:
                    await self._give_way(name, f"YOLOR_MODEL_MEMORY_MB={budget}")
                except Overloaded as e:
                    log.warning("over the memory budget: %s", e.message)
                    break

    async def _give_way(self, loading: str, limit: str) -> None:
        """Unload the model loaded on demand that was used least recently, of those no request holds
        (never `loading`, nor a model loaded at start-up or through the repository API)."""
        models = self._state.models
        held = [models.held(name) for name in models.names() if name != loading]
        candidates = [versions for versions in held if all(m.on_demand and m.users == 0 for m in versions)]
        if not candidates:
            raise Overloaded(
                f"{limit}: no loaded model can give way to {loading!r} (all in use or pinned); retry"
            )
        victim = min(candidates, key=lambda versions: max(m.last_used for m in versions))[0].name
        log.info("unloading %s (least recently used) to keep within %s", victim, limit)
        await self._switch(victim, [], keep_others=False)

    async def reload_on_signal(self) -> None:
        """SIGHUP: once the change running now (if any) is done, re-read. A model folder: the default
        model's folder. A repository: every loaded model at its policy's versions (one not there
        any more is unloaded), and the start-up models that are not loaded. Outcomes are logged."""
        if self._signal_waiting:
            return
        self._signal_waiting = True
        async with self._lock:
            self._signal_waiting = False  # a signal from now on asks for another read
            for name in self._reread_names():
                try:
                    wanted = self._versions(name)
                except UnknownModel:
                    wanted = []  # gone from the repository
                held = self._state.models.held(name)
                on_demand = bool(held) and all(m.on_demand for m in held)
                try:
                    done = await self._switch(name, wanted, keep_others=False)
                except (ReloadFailed, ReloadUnavailable, UnknownModel) as e:
                    log.error("SIGHUP re-read of %s: %s", name, e.message)
                    continue
                last_used = max((m.last_used for m in held), default=0.0)
                for model in done.loaded:  # a model loaded on demand may still give way
                    model.on_demand, model.last_used = on_demand, last_used
                versions = [m.version for m in done.loaded]
                log.info("SIGHUP re-read of %s: serving versions %s", name, versions or "none (unloaded)")

    def _reread_names(self) -> list[str]:
        state = self._state
        names = state.models.names()
        if state.settings.model_repository is not None:
            try:
                repository = scan(state.settings.model_repository)
            except RepositoryError as e:
                log.error("SIGHUP: %s", e)
                return []
            names += [n for n in state.settings.models or list(repository.models) if n in repository.models]
        return list(dict.fromkeys(names))

    def _versions(self, name: str) -> list[ModelVersion]:
        """The versions of `name` to serve, read now (UnknownModel when there is no such model;
        ReloadFailed when its policy serves none)."""
        settings = self._state.settings
        if settings.model_repository is None:
            loaded = self._state.models.find(name)
            if name != settings.v2_model_name:
                raise UnknownModel(f"no model {name!r}: this server serves the one in {settings.model_dir}")
            return [ModelVersion(name, 1, loaded.model_dir if loaded is not None else settings.model_dir)]
        try:
            model = scan(settings.model_repository).model(name)
        except RepositoryError as e:
            raise ReloadFailed(str(e)) from None
        if model is None:
            raise UnknownModel(f"no model {name!r} in the repository {settings.model_repository}")
        if not model.served:
            raise ReloadFailed(
                f"{name}: its version policy serves none of its versions {sorted(model.versions)}"
            )
        return model.served

    def _single_process(self) -> None:
        """ReloadUnavailable with several worker processes: a request reaches one of them."""
        workers = self._state.settings.workers
        if workers > 1:
            raise ReloadUnavailable(
                f"with YOLOR_WORKERS={workers} every worker process holds its own models: send SIGHUP to "
                "the server's parent process instead (uvicorn replaces the workers one by one)"
            )

    def _why_not(self) -> str:
        state = self._state
        return "" if state.readiness.ready else state.readiness.why_not or "not ready"

    async def _switch(self, name: str, wanted: list[ModelVersion], *, keep_others: bool) -> Switched:
        """Serve `wanted` (versions of `name`) once each is loaded, checked and warm, in place of the
        versions held now (all of them, or with `keep_others` only those `wanted` replaces); the
        lock is held."""
        state = self._state
        if why := self._why_not():
            raise ReloadUnavailable(f"cannot change the models now: {why}")
        started = time.monotonic()
        self.loading.add(name)
        try:
            new, load_s = await self._load_all(wanted)
        finally:
            self.loading.discard(name)
        warmup_s = time.monotonic() - started - load_s
        if state.readiness.shutting_down:  # began during the load: it closes the serving models only
            await asyncio.gather(*(m.close(state.settings.request_timeout_s) for m in new))
            raise ReloadUnavailable("the server began shutting down during the change")
        # The switch: no await from here to the last assignment.
        replaced = {m.version for m in new}
        old = [m for m in state.models.held(name) if not keep_others or m.version in replaced]
        for model in old:
            state.models.remove(name, model.version)
            model.metrics.remove_info()  # a version served again gets its own below
        for model in new:
            state.serve(model)
        state.retiring.update(old)
        state.metrics.reloads.labels(result="ok").inc()
        state.metrics.last_reload.set(time.time())
        log.info(
            "%s: serving versions %s (retiring %s)",
            name,
            [m.version for m in new] or "none",
            [f"{m.version} from {m.model_dir}" for m in old] or "none",
        )
        retire_started = time.monotonic()
        try:
            released = await asyncio.gather(*(m.retire(state.settings.request_timeout_s) for m in old))
            if any(released):
                await asyncio.to_thread(return_freed_memory)
        finally:
            state.retiring.difference_update(old)
        for model in old:
            if state.models.find(model.name, model.version) is None:  # not served again: its series go
                model.metrics.remove()
        return Switched(new, old, load_s, warmup_s, time.monotonic() - retire_started, all(released))

    async def _load_all(self, wanted: list[ModelVersion]) -> tuple[list[LoadedModel], float]:
        """Each of `wanted` loaded, checked and warmed up (all or none: on a failure the ones loaded
        are closed), and the seconds the loads (not the warm-ups) took."""
        new: list[LoadedModel] = []
        load_s = 0.0
        try:
            for want in wanted:
                started = time.monotonic()
                model = await self._load(want)
                new.append(model)
                load_s += time.monotonic() - started
                await self._warm(model, want)
        except BaseException:
            closed = await asyncio.gather(*(m.close(self._state.settings.request_timeout_s) for m in new))
            if any(closed):
                await asyncio.to_thread(return_freed_memory)
            raise
        return new, load_s

    async def _load(self, want: ModelVersion) -> LoadedModel:
        state = self._state
        assert state.pool is not None  # set at start-up, before any model
        try:
            return await load_model(
                state.settings,
                want.path,
                self._factory,
                metrics=state.metrics,
                pool=state.pool,
                name=want.name,
                version=want.version,
            )
        except Exception as e:
            raise self._failed(want, f"{type(e).__name__}: {e}") from e

    async def _warm(self, new: LoadedModel, want: ModelVersion) -> None:
        """Every batch size through the new backend, and its post-processing."""
        try:
            await new.warm_up(decode_threads=0)
        except Exception as e:
            raise self._failed(want, f"warm-up failed: {type(e).__name__}: {e}") from e

    def _failed(self, want: ModelVersion, reason: str) -> ReloadFailed:
        self._state.metrics.reloads.labels(result="failed").inc()
        held = self._state.models.find(want.name, want.version)
        still = f"still serving {held.model_dir}" if held is not None else "nothing changed"
        log.error(
            "loading %s version %d from %s failed (%s); %s", want.name, want.version, want.path, reason, still
        )
        return ReloadFailed(f"reload of {want.path} failed, {still}: {reason}")
