"""argparse value types shared by the subcommands: a bad value is argparse's error (exit status 2,
usage and the option named), before any work starts."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse `type` accepting integers >= minimum (and <= maximum, if given), with a clear message
    otherwise."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return parse


seed = int_at_least(0, 2**32 - 1)  # what numpy's seeding accepts


def float_in(low: float, high: float | None = None, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse `type` accepting finite floats in [low, high] (`low_open`: (low, high]; no `high`: no
    upper bound), with a clear message otherwise."""

    def parse(text: str) -> float:
        value = float(text)
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            bounds = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
        return value

    return parse


fraction = float_in(0.0, 1.0)  # probabilities and thresholds: [0, 1]
positive_float = float_in(0.0, low_open=True)
non_negative_float = float_in(0.0)


def positive_int_list(text: str) -> list[int]:
    """An argparse `type`: "1,2,4,16" -> [1, 2, 4, 16], sorted, without repeats, each >= 1."""
    parse = int_at_least(1)
    try:
        return sorted({parse(part) for part in text.split(",") if part.strip()})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
