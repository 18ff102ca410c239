"""Readiness: one formula for every reader, and the yolor_ready gauge follows each change."""

from __future__ import annotations

import itertools

import pytest

from service.core.errors import NotReady, ShuttingDown
from service.core.state import Readiness

pytestmark = pytest.mark.unit


class Gauge:
    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, value: float) -> None:
        self.values.append(value)


@pytest.mark.parametrize(
    ("warm", "shutting_down", "stalled"), list(itertools.product([False, True], repeat=3))
)
def test_every_combination_in_any_order(warm, shutting_down, stalled):
    steps = {
        "warm": lambda r: r.warmed() if warm else r.starting("warming up"),
        "stall": lambda r: r.stall("a batch has run for 31 s" if stalled else ""),
        "shut": lambda r: r.shut_down() if shutting_down else None,
    }
    expected = warm and not shutting_down and not stalled
    for order in itertools.permutations(steps):
        gauge = Gauge()
        readiness = Readiness(gauge)
        for step in order:
            steps[step](readiness)
        assert readiness.ready == expected and gauge.values[-1] == (1 if expected else 0)
        if expected:
            readiness.check()
            assert readiness.why_not == ""
            continue
        failure = ShuttingDown if shutting_down else NotReady
        with pytest.raises(failure) as raised:
            readiness.check()
        assert type(raised.value) is failure and readiness.why_not in str(raised.value)
        if not warm and not shutting_down:
            assert readiness.why_not == "warming up"  # what is missing first: the warm-up


def test_a_stall_that_clears_makes_it_ready_again():
    gauge = Gauge()
    readiness = Readiness(gauge)
    readiness.warmed()
    readiness.stall("a batch has run for 31 s")
    readiness.stall("")
    assert readiness.ready and gauge.values == [1, 0, 1]
