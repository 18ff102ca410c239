"""`yolor bench bare`: the backend alone, per batch size, as the server would load it.

For each batch size (1, 2, 4, ... up to the largest the server forms) the backend runs the same
batch repeatedly after a warm-up, from as many threads at once as the server keeps batches in
flight (`backend.concurrency`): images/s = images / wall time of the measured calls, latency
percentiles of one call, and the process CPU time per image. The input is a fixed pseudo-random
batch in [0, 1] (inference cost does not depend on the pixels); pre- and post-processing are not
part of it (`yolor bench serve` measures the whole request).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.stats import doubling, process_cpu_seconds, rate
from bench.timing import BatchResult, Clock, time_calls
from service.backends.base import Backend
from service.backends.factory import load_checked_backend
from service.manifest import ModelManifest, load_manifest
from service.settings import Settings


def load_backend(settings: Settings) -> tuple[ModelManifest, Backend, int]:
    """(manifest, backend, largest batch) of `settings.model_dir`, loaded and checked as `yolor serve`
    loads it."""
    manifest = load_manifest(settings.model_dir)
    backend, max_batch = load_checked_backend(settings, manifest)
    return manifest, backend, max_batch


def batch_sizes(max_batch: int) -> list[int]:
    """Powers of two up to `max_batch`, and `max_batch` itself: 1, 2, 4, 8 (8); 1, 2, 4, 6 (6)."""
    return doubling(max_batch)


def bench_batch(
    backend: Backend,
    batch_size: int,
    *,
    min_seconds: float = 2.0,
    min_calls: int = 5,
    warmup_calls: int = 3,
    clock: Clock = time.perf_counter,
    cpu_clock: Clock = process_cpu_seconds,
    seed: int = 0,
) -> BatchResult:
    """Run `batch_size` images through `backend.infer` from `backend.concurrency` threads until both
    `min_seconds` and `min_calls` are reached (after `warmup_calls` unmeasured calls)."""
    batch = np.random.default_rng(seed).random((batch_size, *backend.input_shape), dtype=np.float32)
    timed = time_calls(
        lambda: backend.infer(batch),
        callers=backend.concurrency,
        min_seconds=min_seconds,
        min_calls=min_calls,
        warmup_calls=warmup_calls,
        clock=clock,
        cpu_clock=cpu_clock,
    )
    return timed.result(batch_size)


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
        "| batch | images/s | p50 ms | p90 ms | p99 ms | CPU ms/image | calls |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lat = r.latency
        lines.append(
            f"| {r.batch_size} | {rate(r.images_per_s)} | {lat.p50_ms:.2f} | {lat.p90_ms:.2f} | "
            f"{lat.p99_ms:.2f} | {r.cpu_ms_per_image:.2f} | {r.calls} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PrecisionPair:
    """One batch size measured on two precisions back to back (the second after the first)."""

    batch_size: int
    base: BatchResult
    other: BatchResult

    @property
    def latency_ratio(self) -> float:
        """p50 of the other precision / p50 of the base one (0.5: twice as fast)."""
        return self.other.latency.p50_ms / self.base.latency.p50_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "base": self.base.to_dict(),
            "other": self.other.to_dict(),
            "latency_ratio": self.latency_ratio,
        }


def compare_precisions(
    base: Backend,
    other: Backend,
    sizes: Iterable[int],
    *,
    progress: Callable[[PrecisionPair], None] | None = None,
    **kw: Any,
) -> list[PrecisionPair]:
    """`bench_batch` of `base`, then of `other`, for each size in turn: each ratio is measured
    within seconds, not minutes apart (the machine's speed drifts)."""
    pairs = []
    for size in sizes:
        pair = PrecisionPair(size, bench_batch(base, size, **kw), bench_batch(other, size, **kw))
        pairs.append(pair)
        if progress is not None:
            progress(pair)
    return pairs


def precision_table(pairs: list[PrecisionPair], base: str, other: str) -> str:
    lines = [
        f"| batch | {base} images/s | {base} p50 ms | {other} images/s | {other} p50 ms "
        f"| {other} / {base} latency |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in pairs:
        lines.append(
            f"| {p.batch_size} | {rate(p.base.images_per_s)} | {p.base.latency.p50_ms:.2f} | "
            f"{rate(p.other.images_per_s)} | {p.other.latency.p50_ms:.2f} | {p.latency_ratio:.3f} |"
        )
    return "\n".join(lines) + "\n"
