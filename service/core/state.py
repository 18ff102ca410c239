"""What the app holds while it serves (`app.state.service`): settings, metrics, and the loaded model."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.core.auth import ApiKeys
from service.core.batcher import DynamicBatcher
from service.core.detector import Detector
from service.core.errors import NotReady, ShuttingDown
from service.core.metrics import Metrics
from service.core.model import LoadedModel
from service.core.model_set import ModelSet
from service.core.watchdog import BackendWatchdog
from service.logs import MODEL
from service.manifest import ModelManifest
from service.settings import Settings
from service.tracing import Tracing

if TYPE_CHECKING:  # service.core.reload imports this module
    from service.core.reload import Reloader


class Readiness:
    """Whether the server takes requests, and why not: the one place that decides it, for `/readyz`,
    the detect and v2 routes, gRPC's ServerReady, reloads and the `yolor_ready` gauge.

    Ready = warmed up, not shutting down, and no batch stuck in the backend (the watchdog's stall).
    """

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge  # yolor_ready: set on every change
        self.warm = False
        self.shutting_down = False
        self.reason = "starting"  # why it is not warm yet
        self.stalled = ""  # the watchdog's reason while a batch is stuck

    @property
    def ready(self) -> bool:
        return self.warm and not self.shutting_down and not self.stalled

    @property
    def why_not(self) -> str:
        """Why it is not ready ('' when it is)."""
        if self.shutting_down:
            return "the server is shutting down"
        return (self.reason if not self.warm else "") or self.stalled

    def starting(self, reason: str) -> None:
        """Still starting: loading, warming up, or failed to (the reason says which)."""
        self.warm, self.reason = False, reason
        self._publish()

    def warmed(self) -> None:
        self.warm, self.reason = True, ""
        self._publish()

    def stall(self, reason: str) -> None:
        """The watchdog: a batch is stuck (`reason`), or it returned ('')."""
        self.stalled = reason
        self._publish()

    def shut_down(self) -> None:
        self.shutting_down = True
        self._publish()

    def check(self) -> None:
        """503: ShuttingDown once shutdown began, NotReady until warm-up is done or while stalled."""
        if self.shutting_down:
            raise ShuttingDown("the server is shutting down")
        if not self.ready:
            raise NotReady(f"not ready: {self.why_not}")

    def _publish(self) -> None:
        self._gauge.set(1 if self.ready else 0)


@dataclass(eq=False)
class ServiceState:
    settings: Settings
    metrics: Metrics
    api_keys: ApiKeys
    admin_keys: ApiKeys = field(default_factory=lambda: ApiKeys([]))
    models: ModelSet = field(default_factory=ModelSet)  # what requests get; a reload replaces one whole
    retiring: set[LoadedModel] = field(default_factory=set)  # replaced, finishing their requests
    pool: ThreadPoolExecutor | None = None
    warmup_task: asyncio.Task[None] | None = None
    watchdog: BackendWatchdog | None = None
    reloader: Reloader | None = None  # once started
    tracing: Tracing | None = None  # when traces are on (service.tracing)
    stop_warmup: threading.Event = field(default_factory=threading.Event)
    readiness: Readiness = field(init=False)

    def __post_init__(self) -> None:
        self.readiness = Readiness(self.metrics.ready)

    @property
    def model(self) -> LoadedModel | None:
        """The default model (its newest version), None before one is loaded."""
        return self.models.find()

    @property
    def manifest(self) -> ModelManifest | None:
        return self.model.manifest if self.model is not None else None

    @property
    def batcher(self) -> DynamicBatcher | None:
        return self.model.batcher if self.model is not None else None

    @property
    def detector(self) -> Detector | None:
        return self.model.detector if self.model is not None else None

    @property
    def reloads(self) -> Reloader:
        """What changes the loaded models (service.core.reload); NotReady before start-up made it."""
        if self.reloader is None:
            raise NotReady(f"not ready: {self.readiness.why_not}")
        return self.reloader

    def serve(self, model: LoadedModel) -> None:
        """Make `model` the one new requests for its name and version take (one assignment: no
        await between readers), and say so in `yolor_model_info`."""
        self.models.put(model)
        if self.models.default is None:
            self.models.default = model.name
        model.metrics.info(
            arch=model.manifest.arch,
            backend=model.backend.name,
            precision=model.backend.precision,
            max_batch=model.max_batch,
            model_dir=str(model.model_dir),
        )

    def inflight_age(self) -> float:
        """Seconds the oldest batch now in any loaded model's backend has been running (0.0: none)."""
        return max((m.batcher.inflight_age() for m in [*self.retiring, *self.models]), default=0.0)

    async def take(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        """`current`, after loading `name` when it is not loaded and YOLOR_LOAD_ON_DEMAND allows
        (service.core.reload.Reloader.load_on_demand: the request waits for the load)."""
        self.readiness.check()
        if name is not None and self.settings.load_on_demand and self.models.find(name, version) is None:
            await self.reloads.load_on_demand(name, version)
        return self.current(name, version)

    def current(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        """The model a request takes (`with state.current().use() as detector`): `name` (default:
        the default model) at `version` (default: its newest); 503 unless ready, 404 (UnknownModel)
        when no such model is loaded."""
        self.readiness.check()
        model = self.models.get(name, version)
        MODEL.set(f"{model.name}:{model.version}")  # this task's log records say so
        return model
