"""Sliced inference's windows (`service.core.tiling`): coverage, overlap, limits, and the `tile` values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.core.errors import InvalidParameter, TooManyTiles
from service.core.tiling import AUTO_FACTOR, TileOptions, axis_starts, grid, grid_count, tile_mode


@pytest.mark.parametrize("length", [1, 63, 64, 65, 100, 333, 1000, 3001])
@pytest.mark.parametrize(("size", "overlap"), [(64, 0.2), (64, 0.0), (100, 0.5), (256, 0.75), (7, 0.2)])
def test_windows_cover_the_axis_and_overlap_as_asked(length, size, overlap):
    starts = axis_starts(length, size, overlap)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + size] = True
    assert covered.all()
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length <= size:
        assert starts == [0]
        return
    assert starts[-1] + size == length  # the last window ends at the edge and is full size
    gaps = np.diff(starts)
    assert (gaps <= size - math.floor(overlap * size)).all()  # neighbours overlap at least that much
    assert (gaps[:-1] == max(1, size - math.floor(overlap * size))).all()


def test_grid_is_row_major_and_clipped():
    windows = grid(100, 150, 64, 0.2)
    assert len(windows) == grid_count(100, 150, 64, 0.2) == 2 * 3
    assert windows[0] == (0, 0, 64, 64) and windows[-1] == (86, 36, 150, 100)
    assert grid(40, 150, 64, 0.2)[0] == (0, 0, 64, 40)  # a short image: windows as tall as it


def test_modes():
    big, small = int(AUTO_FACTOR * 64) + 1, int(AUTO_FACTOR * 64)
    assert TileOptions("off").windows(1000, 1000, input_size=64, max_tiles=1000) == []
    assert TileOptions("auto").windows(small, small, input_size=64, max_tiles=1000) == []
    assert len(TileOptions("auto").windows(big, big, input_size=64, max_tiles=1000)) > 1
    assert len(TileOptions("on").windows(65, 65, input_size=64, max_tiles=1000)) == 4
    assert TileOptions("on").windows(64, 64, input_size=64, max_tiles=1000) == []  # one window: untiled
    assert TileOptions("on", size=128).windows(120, 90, input_size=64, max_tiles=1000) == []


def test_explicit_size_over_the_limit_is_refused():
    with pytest.raises(TooManyTiles, match="48 tiles"):
        TileOptions("on", size=64).windows(300, 400, input_size=64, max_tiles=47)
    assert len(TileOptions("on", size=64).windows(300, 400, input_size=64, max_tiles=48)) == 48


@pytest.mark.parametrize("max_tiles", [1, 2, 4, 9, 64])
@pytest.mark.parametrize(("height", "width"), [(3000, 4000), (500, 8000), (700, 700)])
def test_default_size_is_the_smallest_window_that_fits(height, width, max_tiles):
    options = TileOptions("on")
    windows = options.windows(height, width, input_size=256, max_tiles=max_tiles)
    if not windows:  # one window would hold the whole image
        assert grid_count(height, width, max(height, width), 0.2) <= max_tiles
        return
    size = max(x2 - x1 for x1, _, x2, _ in windows)
    assert len(windows) <= max_tiles and size >= 256
    if size > 256:
        assert grid_count(height, width, size - 1, 0.2) > max_tiles


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (True, "on"),
        (False, "off"),
        ("true", "on"),
        ("1", "on"),
        ("False", "off"),
        ("0", "off"),
        ("AUTO", "auto"),
    ],
)
def test_tile_values(value, mode):
    assert tile_mode(value) == mode


def test_bad_tile_value():
    with pytest.raises(InvalidParameter, match="true, false or auto"):
        tile_mode("sometimes")
