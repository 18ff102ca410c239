"""Class filter parsing (ids and names) for detect requests."""

from __future__ import annotations

import pytest

from service.detector import resolve_classes
from service.errors import InvalidParameter

pytestmark = pytest.mark.unit

NAMES = ["person", "car", "traffic light"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, None),
        ([], None),
        ([1], (1,)),
        (["car"], (1,)),
        (["2,person"], (0, 2)),
        (["traffic light", "0", 0], (0, 2)),
        ([" car , 1 "], (1,)),
        ([","], None),
    ],
)
def test_resolve_classes(values, expected):
    assert resolve_classes(values, NAMES) == expected


@pytest.mark.parametrize("values", [["cat"], [3], ["-1"], ["3"], ["Car"]])
def test_unknown_classes_are_refused(values):
    with pytest.raises(InvalidParameter):
        resolve_classes(values, NAMES)
