"""Timing a call repeatedly: images/s, latency percentiles and CPU time of one batch size.

Shared by `yolor bench bare`, `torch` and `gpu`; numpy only (no pydantic, no torch), so that
`yolor bench gpu` runs on a GPU host without the server's packages.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.stats import Latency, process_cpu_seconds

Clock = Callable[[], float]

CAPPED_MIN_CALLS = 5  # `max_seconds` stops a row only once this many calls are in (or min_calls)


@dataclass(frozen=True)
class BatchResult:
    batch_size: int
    calls: int
    callers: int  # threads calling at once (the backend's concurrency)
    seconds: float  # wall time of the measured calls
    images_per_s: float
    latency: Latency  # of one call (one batch)
    cpu_ms_per_image: float  # process CPU time in the measured calls / images

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency": asdict(self.latency)}


@dataclass(frozen=True)
class TimedCalls:
    durations: list[float]
    callers: int
    wall_s: float
    cpu_s: float

    def result(self, batch_size: int) -> BatchResult:
        images = batch_size * len(self.durations)
        return BatchResult(
            batch_size=batch_size,
            calls=len(self.durations),
            callers=self.callers,
            seconds=self.wall_s,
            images_per_s=images / self.wall_s if self.wall_s > 0 else float("inf"),
            latency=Latency.of(self.durations),
            cpu_ms_per_image=self.cpu_s * 1000 / images,
        )


def time_calls(
    call: Callable[[], object],
    *,
    callers: int = 1,
    min_seconds: float = 2.0,
    min_calls: int = 5,
    max_seconds: float = math.inf,
    warmup_calls: int = 3,
    clock: Clock = time.perf_counter,
    cpu_clock: Clock = process_cpu_seconds,
) -> TimedCalls:
    """`call()` from `callers` threads at once until both `min_seconds` (wall) and `min_calls` are
    reached, after `warmup_calls` unmeasured calls. Past `max_seconds` the calls stop as soon as
    min(min_calls, CAPPED_MIN_CALLS) are in, even below `min_calls` (a slow row must not spend a
    time budget meant for the others)."""
    for _ in range(warmup_calls):
        call()
    durations: list[float] = []
    cpu0, start = cpu_clock(), clock()
    capped_calls = min(min_calls, CAPPED_MIN_CALLS)

    def more() -> bool:
        spent = clock() - start
        if spent >= max_seconds and len(durations) >= capped_calls:
            return False
        return len(durations) < min_calls or spent < min_seconds

    def call_until_done() -> None:
        while more():
            t0 = clock()
            call()
            durations.append(clock() - t0)  # list.append is atomic

    threads = [threading.Thread(target=call_until_done) for _ in range(callers - 1)]
    for thread in threads:
        thread.start()
    call_until_done()
    for thread in threads:
        thread.join()
    return TimedCalls(durations, callers, clock() - start, cpu_clock() - cpu0)
