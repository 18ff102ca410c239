"""Sliced inference (`tile`): the windows of a large image the model sees, as SAHI slices it.

A tiled image runs as a grid of square windows `size` pixels wide overlapping by `overlap` of
their width (the last window of a row or column is moved back to end at the image's edge, so
windows are full size), plus one pass of the whole image for objects larger than a window. Each
pass is letterboxed into the model input as an untiled image is, and the detections of all passes
are mapped back to the image and merged (`service.processing.merge_detections`).

- `auto` tiles only an image whose longer side is more than AUTO_FACTOR x the model input;
  `on` tiles any image larger than one window.
- Without a `size` a window is the model input (slices are seen at full resolution), grown just
  enough for the grid to fit in `max_tiles`; an explicit `size` whose grid does not fit is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from service.core.errors import InvalidParameter, TooManyTiles
from service.processing import MergeMode

TileMode = Literal["off", "on", "auto"]
Window = tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels

AUTO_FACTOR = 2.0
DEFAULT_OVERLAP = 0.2
DEFAULT_MERGE: MergeMode = "nms"
MATCH_IOS = 0.5  # boxes of two passes are one object above this intersection over the smaller box
MIN_SIZE, MAX_SIZE = 32, 8192  # bounds of `tile_size` (service.http.schemas)
MAX_OVERLAP = 0.75


_MODES: dict[str, TileMode] = {"false": "off", "0": "off", "off": "off", "no": "off"}
_MODES |= {"true": "on", "1": "on", "on": "on", "yes": "on", "auto": "auto"}
TILE_WORDS = tuple(_MODES)  # what a query string's `tile` may say (any case, surrounding spaces)


def tile_mode(value: bool | str) -> TileMode:
    """The `tile` parameter (true / false / auto, or a JSON boolean) as a mode; InvalidParameter else."""
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = _MODES.get(value.strip().lower())
    if mode is None:
        raise InvalidParameter(f"tile must be true, false or auto, got {value!r}")
    return mode


def axis_starts(length: int, size: int, overlap: float) -> list[int]:
    """Window starts along one axis: every `size - floor(overlap * size)` pixels, the last one at
    `length - size` (a single window at 0 when `length <= size`)."""
    if length <= size:
        return [0]
    step = max(1, size - math.floor(overlap * size))
    return [*range(0, length - size, step), length - size]


def grid(height: int, width: int, size: int, overlap: float) -> list[Window]:
    """The windows covering a `height` x `width` image, row by row (clipped to the image)."""
    return [
        (x, y, min(x + size, width), min(y + size, height))
        for y in axis_starts(height, size, overlap)
        for x in axis_starts(width, size, overlap)
    ]


def grid_count(height: int, width: int, size: int, overlap: float) -> int:
    return len(axis_starts(height, size, overlap)) * len(axis_starts(width, size, overlap))


@dataclass(frozen=True)
class TileOptions:
    """A request's tiling: `mode`, window `size` (None: the model input, grown to fit), `overlap`
    (fraction of a window), and how overlapping detections are merged (`merge`)."""

    mode: TileMode = "off"
    size: int | None = None
    overlap: float = DEFAULT_OVERLAP
    merge: MergeMode = DEFAULT_MERGE

    @classmethod
    def of(cls, tile: bool | str, size: int | None, overlap: float, merge: MergeMode) -> TileOptions:
        """A request's `tile`, `tile_size`, `tile_overlap` and `tile_merge` parameters."""
        return cls(tile_mode(tile), size, overlap, merge)

    def windows(self, height: int, width: int, *, input_size: int, max_tiles: int) -> list[Window]:
        """The windows of a `height` x `width` image (empty: run it untiled). Raises TooManyTiles
        when an explicit `size` needs more than `max_tiles` windows."""
        if self.mode == "off" or (self.mode == "auto" and max(height, width) <= AUTO_FACTOR * input_size):
            return []
        if self.size is not None:
            if max(height, width) <= self.size:
                return []
            count = grid_count(height, width, self.size, self.overlap)
            if count > max_tiles:
                raise TooManyTiles(
                    f"tile_size {self.size} slices a {width}x{height} image into {count} tiles; at most "
                    f"{max_tiles} per image (YOLOR_MAX_TILES_PER_IMAGE): use a larger tile_size or omit it"
                )
            return grid(height, width, self.size, self.overlap)
        size = self._fitting_size(height, width, input_size, max_tiles)
        return [] if max(height, width) <= size else grid(height, width, size, self.overlap)

    def _fitting_size(self, height: int, width: int, input_size: int, max_tiles: int) -> int:
        """The smallest window >= `input_size` whose grid has at most `max_tiles` windows."""
        low, high = input_size, max(height, width, input_size)
        if grid_count(height, width, low, self.overlap) <= max_tiles:
            return low
        while high - low > 1:  # grid_count(low) > max_tiles >= grid_count(high)
            middle = (low + high) // 2
            if grid_count(height, width, middle, self.overlap) <= max_tiles:
                high = middle
            else:
                low = middle
        return high
