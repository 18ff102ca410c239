"""What a CPU-only server can reach at most, measured on this machine, and the ratios to it.

Every served image costs the server the backend's CPU time for its share of a batch plus decoding
and letterboxing it, so with `cores` CPUs it cannot answer more than

    cores / (inference CPU s per image + decode/letterbox CPU s per image)   images/s.

Both terms are measured here: the first from a bare backend run at the server's max batch (process
CPU time over images: it counts every intra-op thread, spinning included), the second by
pre-processing the benchmark's own JPEGs exactly as a request does (`service.core.preprocess.preprocess`),
on one thread. HTTP, JSON and post-processing are left out of the limit: they are the overheads
the served number pays for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.stats import rate
from service.core.preprocess import preprocess
from service.manifest import ModelManifest


def preprocess_cpu_ms(
    jpegs: Sequence[bytes],
    manifest: ModelManifest,
    *,
    max_pixels: int,
    reduced_decode: bool = False,
    min_seconds: float = 1.0,
) -> float:
    """Mean CPU ms of this thread to pre-process one of `jpegs` (each at least once, after one warm-up)."""

    def run(jpeg: bytes) -> None:
        preprocess(jpeg, manifest, max_pixels=max_pixels, reduced_decode=reduced_decode)

    run(jpegs[0])
    done, cpu0, wall0 = 0, time.thread_time(), time.perf_counter()
    while done < len(jpegs) or time.perf_counter() - wall0 < min_seconds:
        run(jpegs[done % len(jpegs)])
        done += 1
    return (time.thread_time() - cpu0) * 1000 / done


@dataclass(frozen=True)
class CpuLimit:
    cores: int
    inference_cpu_ms: float  # per image, bare backend at the max batch
    preprocess_cpu_ms: float  # per image: decode + letterbox + tensor

    @property
    def images_per_s(self) -> float:
        return self.cores * 1000 / (self.inference_cpu_ms + self.preprocess_cpu_ms)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": self.images_per_s}


@dataclass(frozen=True)
class Round:
    """One side-by-side round: the bare backend, then the server, each for the same time, back to back."""

    bare_images_per_s: float  # at the max batch
    bare_cpu_ms_per_image: float  # at the max batch
    served_images_per_s: float  # at the compared concurrency
    bare_p50_ms_b1: float  # batch 1
    served_p50_ms_c1: float  # concurrency 1
    served_cpu_ms_per_image: float | None = None  # the server process, at the compared concurrency
    client_cpu_ms_per_image: float | None = None  # the load generator, the same


@dataclass(frozen=True)
class Comparison:
    """The issue's three ratios: the median over rounds of each round's ratio (a machine that other
    work slows for a while slows both sides of a round, not one ratio)."""

    max_batch: int
    concurrency: int  # the served level compared (the best of the sweep at >= 2 x max batch)
    cores: int
    preprocess_cpu_ms: float
    rounds: list[Round]

    def _median(self, values: list[float]) -> float:
        return float(np.median(values))

    @property
    def served_over_bare(self) -> float:
        return self._median([r.served_images_per_s / r.bare_images_per_s for r in self.rounds])

    def limit(self, r: Round) -> CpuLimit:
        return CpuLimit(self.cores, r.bare_cpu_ms_per_image, self.preprocess_cpu_ms)

    @property
    def limit_images_per_s(self) -> float:
        return self._median([self.limit(r).images_per_s for r in self.rounds])

    @property
    def served_over_limit(self) -> float:
        return self._median([r.served_images_per_s / self.limit(r).images_per_s for r in self.rounds])

    @property
    def p50_overhead_ms(self) -> float:
        return self._median([r.served_p50_ms_c1 - r.bare_p50_ms_b1 for r in self.rounds])

    @property
    def cores_busy(self) -> float | None:
        """Median share of the cores that the server and the load generator kept busy."""
        busy = [
            r.served_images_per_s * (r.served_cpu_ms_per_image + r.client_cpu_ms_per_image) / 1000
            for r in self.rounds
            if r.served_cpu_ms_per_image is not None and r.client_cpu_ms_per_image is not None
        ]
        return self._median(busy) / self.cores if busy else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "cores_busy": self.cores_busy,
            "served_over_bare": self.served_over_bare,
            "limit_images_per_s": self.limit_images_per_s,
            "served_over_limit": self.served_over_limit,
            "p50_overhead_ms": self.p50_overhead_ms,
        }

    def lines(self) -> list[str]:
        med = self._median
        served = med([r.served_images_per_s for r in self.rounds])
        bare = med([r.bare_images_per_s for r in self.rounds])
        inference = med([r.bare_cpu_ms_per_image for r in self.rounds])
        n = f"median of {len(self.rounds)} side-by-side rounds"
        return [
            f"served/bare at max batch {self.max_batch}: {self.served_over_bare:.3f} ({n}; served "
            f"{rate(served)} images/s at concurrency {self.concurrency}, bare {rate(bare)})",
            f"CPU limit {rate(self.limit_images_per_s)} images/s = {self.cores} cores / ({inference:.2f} ms "
            f"inference + {self.preprocess_cpu_ms:.2f} ms decode/letterbox CPU per image); "
            f"served/limit: {self.served_over_limit:.3f}",
            f"p50 at concurrency 1: {med([r.served_p50_ms_c1 for r in self.rounds]):.2f} ms, bare batch-1 "
            f"p50 {med([r.bare_p50_ms_b1 for r in self.rounds]):.2f} ms: +{self.p50_overhead_ms:.2f} ms",
            *self._cpu_lines(inference),
        ]

    def _cpu_lines(self, inference_ms: float) -> list[str]:
        """Where the served images' CPU went, against the limit's two terms."""
        server = [r.served_cpu_ms_per_image for r in self.rounds if r.served_cpu_ms_per_image is not None]
        client = [r.client_cpu_ms_per_image for r in self.rounds if r.client_cpu_ms_per_image is not None]
        busy = self.cores_busy
        if not server or not client or busy is None:
            return []
        return [
            f"served CPU per image: server {self._median(server):.2f} ms + load generator "
            f"{self._median(client):.2f} ms (the limit counts "
            f"{inference_ms + self.preprocess_cpu_ms:.2f} ms); "
            f"cores busy {100 * busy:.0f}%"
        ]
