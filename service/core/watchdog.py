"""The backend watchdog: a batch stuck in the backend turns the service not ready.

A backend call that never returns (a GPU fault, a driver deadlock) blocks the single worker: every
queued request then waits for its deadline and gets 504, and new ones would queue behind it for
ever. The watchdog samples how long the batch in the backend has been running; past `limit_s` it
marks the service stalled (`/readyz` 503, the detect routes 503, `yolor_backend_stalled` 1), so the
orchestrator stops routing to it or restarts it. When the batch does return, the mark is lifted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.core.metrics import Metrics

log = logging.getLogger(__name__)


class BackendWatchdog:
    """Polls `inflight_age()` every `interval_s`; calls `on_stall(reason)` / `on_recover()` on changes."""

    def __init__(
        self,
        inflight_age: Callable[[], float],
        metrics: Metrics,
        *,
        limit_s: float,
        on_stall: Callable[[str], None],
        on_recover: Callable[[], None],
        interval_s: float | None = None,
    ) -> None:
        if limit_s <= 0:
            raise ValueError(f"limit_s must be > 0, got {limit_s}")
        self._age, self._metrics = inflight_age, metrics
        self.limit_s = limit_s
        self.interval_s = interval_s if interval_s is not None else min(1.0, limit_s / 4)
        self._on_stall, self._on_recover = on_stall, on_recover
        self.stalled = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="yolor-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def check(self) -> None:
        """One sample: update the age gauge, and the stalled state when it changes."""
        age = self._age()
        self._metrics.inflight_batch_age.set(age)
        if age > self.limit_s and not self.stalled:
            self.stalled = True
            self._metrics.backend_stalled.set(1)
            self._metrics.backend_stalls.inc()
            reason = f"a batch has been in the backend for {age:.1f} s (watchdog limit {self.limit_s:g} s)"
            log.error("backend stalled: %s; not ready until it returns", reason)
            self._on_stall(reason)
        elif age <= self.limit_s and self.stalled:
            self.stalled = False
            self._metrics.backend_stalled.set(0)
            log.warning("the stalled batch returned; the backend is serving again")
            self._on_recover()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()
