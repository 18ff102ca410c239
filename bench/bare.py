"""`yolor bench bare`: the backend alone, per batch size, as the server would load it.

For each batch size (1, 2, 4, ... up to the largest the server forms) the backend runs the same
batch repeatedly after a warm-up: images/s = batch size x calls / time spent in `infer`, and the
latency percentiles of one call. The input is a fixed pseudo-random batch in [0, 1] (inference cost
does not depend on the pixels); pre- and post-processing are not part of it (`yolor bench serve`
measures the whole request).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.stats import Latency
from service.backends.base import Backend

Clock = Callable[[], float]


def batch_sizes(max_batch: int) -> list[int]:
    """Powers of two up to `max_batch`, and `max_batch` itself: 1, 2, 4, 8 (8); 1, 2, 4, 6 (6)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    return sizes if sizes[-1] == max_batch else [*sizes, max_batch]


@dataclass(frozen=True)
class BatchResult:
    batch_size: int
    calls: int
    seconds: float  # time spent in the measured calls
    images_per_s: float
    latency: Latency  # of one call (one batch)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency": asdict(self.latency)}


def bench_batch(
    backend: Backend,
    batch_size: int,
    *,
    min_seconds: float = 2.0,
    min_calls: int = 5,
    warmup_calls: int = 3,
    clock: Clock = time.perf_counter,
    seed: int = 0,
) -> BatchResult:
    """Run `batch_size` images through `backend.infer` until both `min_seconds` and `min_calls` are
    reached (after `warmup_calls` unmeasured calls)."""
    batch = np.random.default_rng(seed).random((batch_size, *backend.input_shape), dtype=np.float32)
    for _ in range(warmup_calls):
        backend.infer(batch)
    durations: list[float] = []
    while len(durations) < min_calls or sum(durations) < min_seconds:
        start = clock()
        backend.infer(batch)
        durations.append(clock() - start)
    total = sum(durations)
    return BatchResult(
        batch_size=batch_size,
        calls=len(durations),
        seconds=total,
        images_per_s=batch_size * len(durations) / total if total > 0 else float("inf"),
        latency=Latency.of(durations),
    )


def bench_bare(
    backend: Backend,
    sizes: Iterable[int],
    *,
    progress: Callable[[BatchResult], None] | None = None,
    **kw: Any,
) -> list[BatchResult]:
    """`bench_batch` for each size, in order; `progress(result)` after each."""
    results = []
    for size in sizes:
        result = bench_batch(backend, size, **kw)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def markdown_table(results: list[BatchResult]) -> str:
    lines = [
        "| batch | images/s | p50 ms | p90 ms | p99 ms | calls |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lat = r.latency
        lines.append(
            f"| {r.batch_size} | {r.images_per_s:.1f} | {lat.p50_ms:.2f} | {lat.p90_ms:.2f} | "
            f"{lat.p99_ms:.2f} | {r.calls} |"
        )
    return "\n".join(lines) + "\n"
