"""The procedural shapes dataset: determinism, label validity against the drawn pixels, coverage, CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cli import CommandError, data_command
from train.data.datasets import load_dataset, parse_yolo_labels
from train.data.shapes import SHAPE_NAMES, render_shape
from train.data.synth import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    SynthOptions,
    generate_image,
    image_rng,
    write_dataset,
)

pytestmark = pytest.mark.unit

SMALL = SynthOptions(size=128, min_size=10, max_frac=0.6, max_objects=6)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_whatever_the_worker_count(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", train=5, val=3, seed=7, options=SMALL, workers=1)
    write_dataset(tmp_path / "b", train=5, val=3, seed=7, options=SMALL, workers=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 2 * (5 + 3) + 1
    assert a == b


def test_different_seed_gives_different_images_and_labels() -> None:
    first = generate_image(image_rng(1, "train", 0), SMALL)
    second = generate_image(image_rng(2, "train", 0), SMALL)
    other_split = generate_image(image_rng(1, "val", 0), SMALL)
    for other in (second, other_split):
        assert first.image.shape != other.image.shape or not np.array_equal(first.image, other.image)
        assert first.boxes.shape != other.boxes.shape or not np.array_equal(first.boxes, other.boxes)


def test_boxes_are_the_tight_boxes_of_visible_uniformly_coloured_shapes() -> None:
    options = SynthOptions()
    checked = 0
    for index in range(25):
        s = generate_image(image_rng(0, "train", index), options)
        height, width = s.image.shape[:2]
        assert max(height, width) == options.size and 0.74 <= height / width <= 1.34
        assert set(np.unique(s.owner)) <= set(range(-1, len(s.classes)))
        assert np.all(s.visible >= options.min_visible) and np.all(s.visible <= 1)
        for k, (x1, y1, x2, y2) in enumerate(s.boxes.tolist()):
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            ys, xs = np.nonzero(s.owner == k)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # what the owner map says is object k is one flat colour (up to the final grain of +-6)
            pixels = s.image[ys, xs].astype(int)
            assert np.abs(pixels - np.median(pixels, axis=0)).max() <= 12
            checked += 1
    assert checked > 50


def test_every_class_appears_in_balanced_proportions() -> None:
    classes = np.concatenate([generate_image(image_rng(3, "train", i), SMALL).classes for i in range(80)])
    counts = np.bincount(classes, minlength=len(CLASS_NAMES))
    assert len(counts) == len(CLASS_NAMES) == 7
    assert counts.min() >= 0.5 * counts.mean()


@pytest.mark.parametrize("class_id", range(len(SHAPE_NAMES)))
def test_shapes_fill_their_circle_and_only_rings_are_hollow(class_id: int) -> None:
    size = 60.0
    shape = render_shape(np.random.default_rng(class_id), class_id, 100.0, 80.0, size)
    ys, xs = np.nonzero(shape.mask)
    ys, xs = ys + shape.top, xs + shape.left
    assert np.hypot(xs + 0.5 - 100, ys + 0.5 - 80).max() <= size / 2 + 1  # inside the circumscribed circle
    assert max(xs.max() - xs.min(), ys.max() - ys.min()) >= 0.6 * size
    centre = shape.mask[80 - shape.top, 100 - shape.left]
    assert centre == (SHAPE_NAMES[class_id] != "ring")
    if SHAPE_NAMES[class_id] == "circle":
        assert abs(shape.mask.sum() / (math.pi * (size / 2) ** 2) - 1) < 0.05


def test_label_files_round_trip_to_pixel_boxes(tmp_path: Path) -> None:
    write_dataset(tmp_path, train=3, val=1, seed=5, options=SMALL)
    for index in range(3):
        s = generate_image(image_rng(5, "train", index), SMALL)
        boxes, classes = parse_yolo_labels(tmp_path / "train" / "labels" / f"{index:06d}.txt", 7)
        height, width = s.image.shape[:2]
        np.testing.assert_allclose(boxes * [width, height, width, height], s.boxes, atol=1e-3)
        np.testing.assert_array_equal(classes, s.classes)


def test_cli_writes_a_dataset_load_dataset_reads(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    data_command.register(parser.add_subparsers(dest="command", required=True))
    argv = ["data", "synth", "--out", str(tmp_path), "--train", "3", "--val", "2", "--seed", "9"]
    argv += ["--size", "96", "--min-size", "10", "--max-objects", "3", "--workers", "1"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["names"] == list(CLASS_NAMES) and meta["seed"] == 9
    assert meta["generator"] == GENERATOR_VERSION and (meta["train"], meta["val"]) == ("train", "val")
    val = load_dataset(tmp_path, "val")
    assert len(val) == 2 and val.names == CLASS_NAMES
    sample = val[1]
    expected = generate_image(image_rng(9, "val", 1), SynthOptions(size=96, min_size=10, max_objects=3))
    np.testing.assert_array_equal(sample.image, expected.image)  # PNG is lossless, channels in RGB
    np.testing.assert_allclose(sample.boxes, expected.boxes, atol=1e-3)
    with pytest.raises(CommandError, match="already exists"):
        args.func(args)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="min_size"):
        SynthOptions(size=64, min_size=40)
    with pytest.raises(ValueError, match="max_objects"):
        SynthOptions(max_objects=0)
