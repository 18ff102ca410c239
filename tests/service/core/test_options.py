"""The detect parameters: each transport's raw form turns into the same DetectOptions, under the
same bounds (query string, JSON body, KServe v2 parameters)."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from service.core.errors import InvalidParameter
from service.core.options import DetectOptions, class_list, resolve_classes
from service.core.tiling import TileOptions
from service.http.schemas import DetectQuery, JsonDetectRequest
from service.kserve.models import ImageParameters
from service.kserve.tensors import TensorError

pytestmark = pytest.mark.unit


def query(**raw) -> DetectOptions:
    return DetectQuery.model_validate(raw).options()


def json_body(**raw) -> DetectOptions:
    return JsonDetectRequest.model_validate({"images": ["AA=="], **raw}).options()


def v2(**raw) -> DetectOptions:
    return ImageParameters.of(raw)


SAME = [  # (query string form, JSON form, v2 form), meaning the same
    ({}, {}, {}),
    ({"classes": ["person,2"]}, {"classes": ["person", 2]}, {"classes": "person,2"}),
    ({"classes": ["person", "2"]}, {"classes": ["person,2"]}, {"classes": " person , 2 "}),
    (
        {"tile": "auto", "tile_size": "512"},
        {"tile": "auto", "tile_size": 512},
        {"tile": "auto", "tile_size": 512},
    ),
    ({"tile": "true"}, {"tile": True}, {"tile": True}),
    (
        {"tile": "false", "agnostic": "true"},
        {"tile": False, "agnostic": True},
        {"tile": "false", "agnostic": True},
    ),
    (
        {"conf": "0.5", "iou": "0.3", "max_det": "7", "tile_merge": "nms", "tile_overlap": "0.5"},
        {"conf": 0.5, "iou": 0.3, "max_det": 7, "tile_merge": "nms", "tile_overlap": 0.5},
        {"conf": 0.5, "iou": 0.3, "max_det": 7, "tile_merge": "nms", "tile_overlap": 0.5},
    ),
]
NAMES = ["person", "car", "dog"]


def resolved(options: DetectOptions) -> DetectOptions:
    """As a model with NAMES reads them ("2" and 2 are both id 2 there: no class is named "2")."""
    return dataclasses.replace(options, classes=resolve_classes(options.classes, NAMES))


@pytest.mark.parametrize(("q", "j", "p"), SAME)
def test_every_transport_means_the_same(q, j, p):
    assert resolved(query(**q)) == resolved(json_body(**j)) == resolved(v2(**p))


def test_the_options_are_what_was_sent():
    options = json_body(classes=["person", 2], tile="auto", tile_size=512, conf=0.5)
    assert options.classes == ("person", 2) and options.conf == 0.5
    assert options.tile == TileOptions("auto", 512)
    assert query() == DetectOptions()  # the defaults, the same object for all three


BAD = [{"conf": 1.5}, {"iou": -0.1}, {"max_det": 0}, {"max_det": 10_001}, {"tile_size": 8}]
BAD += [{"tile_overlap": 0.9}, {"tile_merge": "union"}]


@pytest.mark.parametrize("bad", BAD)
def test_the_same_bounds_refuse_the_same_values(bad):
    with pytest.raises(ValidationError):
        query(**{k: str(v) for k, v in bad.items()})
    with pytest.raises(ValidationError):
        json_body(**bad)
    with pytest.raises(TensorError, match=next(iter(bad))):
        v2(**bad)


def test_a_tile_word_outside_the_three_is_refused_by_every_transport():
    with pytest.raises(InvalidParameter):
        query(tile="sometimes")
    with pytest.raises(ValidationError):
        json_body(tile="sometimes")
    with pytest.raises(InvalidParameter):
        v2(tile="sometimes")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ([], None),
        ("a,b", ("a", "b")),
        (["a, b", 3], ("a", "b", 3)),
        ([" , "], None),
    ],
)
def test_class_list(raw, expected):
    assert class_list(raw) == expected
