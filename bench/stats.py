"""Latency summaries (percentiles of durations, in milliseconds) and this process's CPU time."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Percentiles and mean of durations, in ms (percentiles by linear interpolation, numpy's default)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            raise ValueError("no durations to summarise")
        ms = np.asarray(seconds, dtype=np.float64) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.mean()))


def process_cpu_seconds() -> float:
    """This process's user + system CPU time, all its threads (ONNX Runtime's intra-op pool too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rate(value: float) -> str:
    """images/s for a table: one decimal, two below 10 (a big model on a CPU answers 0.5/s)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def doubling(top: int) -> list[int]:
    """1, 2, 4, ... up to `top`, and `top` itself: 8 -> [1, 2, 4, 8]; 6 -> [1, 2, 4, 6]."""
    if top < 1:
        raise ValueError(f"need a largest value >= 1, got {top}")
    values = [1 << i for i in range(top.bit_length()) if 1 << i <= top]
    return values if values[-1] == top else [*values, top]
