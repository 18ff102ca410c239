"""bench.timing.time_calls on a fake clock: when it stops, and what it counts."""

from __future__ import annotations

import math

import pytest

from bench.timing import CAPPED_MIN_CALLS, time_calls

pytestmark = pytest.mark.unit


class SlowCall:
    """A call that takes `seconds` on its own fake clock (also the CPU clock: one core busy)."""

    def __init__(self, seconds: float) -> None:
        self.now, self.seconds, self.calls = 0.0, seconds, 0

    def clock(self) -> float:
        return self.now

    def __call__(self) -> None:
        self.now += self.seconds
        self.calls += 1


@pytest.mark.parametrize(
    ("seconds", "min_calls", "min_seconds", "max_seconds", "measured"),
    [
        (0.1, 50, 2.0, math.inf, 50),  # min_calls is the longer: 5 s
        (0.01, 50, 2.0, math.inf, 200),  # min_seconds is the longer
        (1.0, 50, 2.0, 8.0, 8),  # capped at 8 s: 8 calls in (>= 5)
        (3.0, 50, 2.0, 8.0, CAPPED_MIN_CALLS),  # capped, but not below 5 calls (15 s)
        (3.0, 2, 0.0, 1.0, 2),  # ... nor above min_calls when that is below 5
    ],
)
def test_calls_stop_at_both_minimums_or_at_the_cap(seconds, min_calls, min_seconds, max_seconds, measured):
    call = SlowCall(seconds)
    timed = time_calls(call, min_calls=min_calls, min_seconds=min_seconds, max_seconds=max_seconds,
                       warmup_calls=3, clock=call.clock, cpu_clock=call.clock)  # fmt: skip
    assert call.calls == 3 + measured and len(timed.durations) == measured
    assert timed.durations == pytest.approx([seconds] * measured)
    result = timed.result(4)
    assert result.images_per_s == pytest.approx(4 / seconds)
    assert result.latency.p50_ms == pytest.approx(seconds * 1000)
    assert result.cpu_ms_per_image == pytest.approx(seconds * 1000 / 4)
