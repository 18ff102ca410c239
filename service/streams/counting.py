"""Lines and zones counted on a stream's tracks: crossings with their direction, entries and exits.

Coordinates are normalised: (x, y) in [0, 1] of the frame's width and height, y down, so one
definition fits every resolution. Each tracked box counts at one anchor point of its box (default
its bottom centre: where a person or a car touches the ground).

- A line (a segment from `start` to `end`) is crossed when a track's anchor passes from one side of
  it to the other through the segment itself (not its extension). Direction: `in` from the left-hand
  side of start->end to its right-hand side, as seen on the image (for a line drawn left to right,
  `in` is moving down), `out` the other way. An anchor exactly on the line keeps its previous side.
- A zone (a polygon) is entered when a track's anchor is inside it and was not (a track first seen
  inside enters it then), and exited when it leaves, or when the track has not been seen for
  `forget_after` frames (`lost`: true). So per zone, inside = entered - exited at every frame.

Only tracked boxes count (track id >= 0); a class filter (class ids) limits a line or a zone to
those classes. Pure numpy: one `Counter` per stream, fed each processed frame in order.
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Point = tuple[float, float]
Direction = Literal["in", "out"]

Anchor = Literal[
    "center", "bottom_center", "top_center", "center_left", "center_right",
    "bottom_left", "bottom_right", "top_left", "top_right",
]  # fmt: skip
# Where on its box a track is counted: (fraction of the width, fraction of the height) from the top left.
ANCHORS: dict[Anchor, Point] = {
    "center": (0.5, 0.5),
    "bottom_center": (0.5, 1.0),
    "top_center": (0.5, 0.0),
    "center_left": (0.0, 0.5),
    "center_right": (1.0, 0.5),
    "bottom_left": (0.0, 1.0),
    "bottom_right": (1.0, 1.0),
    "top_left": (0.0, 0.0),
    "top_right": (1.0, 0.0),
}
DEFAULT_ANCHOR: Anchor = "bottom_center"


@dataclass(frozen=True)
class Line:
    name: str
    start: Point
    end: Point
    classes: frozenset[int] | None = None  # None: every class
    anchor: Anchor = DEFAULT_ANCHOR

    def __post_init__(self) -> None:
        _check(self.name, self.anchor, (self.start, self.end))
        if self.start == self.end:
            raise ValueError(f"line {self.name!r}: start and end are the same point")


@dataclass(frozen=True)
class Zone:
    name: str
    polygon: tuple[Point, ...]
    classes: frozenset[int] | None = None
    anchor: Anchor = DEFAULT_ANCHOR

    def __post_init__(self) -> None:
        _check(self.name, self.anchor, self.polygon)
        if len(self.polygon) < 3:
            raise ValueError(f"zone {self.name!r}: a polygon needs at least 3 points")


def _check(name: str, anchor: Anchor, points: tuple[Point, ...]) -> None:
    if anchor not in ANCHORS:
        raise ValueError(f"{name!r}: anchor {anchor!r} is not one of {', '.join(ANCHORS)}")
    if not all(0.0 <= c <= 1.0 for p in points for c in p):
        raise ValueError(f"{name!r}: coordinates are normalised, each in [0, 1]")


@dataclass(frozen=True)
class CountEvent:
    kind: Literal["line.cross", "zone.enter", "zone.exit"]
    name: str  # the line's or the zone's
    frame: int
    track_id: int
    class_id: int
    direction: Direction | None = None  # line.cross only
    lost: bool = False  # zone.exit only: the track was not seen for `forget_after` frames


@dataclass
class LineCount:
    crossed: Tally[Direction] = field(default_factory=Tally)
    by_class: dict[int, Tally[Direction]] = field(default_factory=dict)


@dataclass
class ZoneCount:
    inside: set[int] = field(default_factory=set)  # track ids
    entered: int = 0
    exited: int = 0


@dataclass
class _Side:
    side: int  # +1 right-hand side of start->end, -1 left-hand side
    point: npt.NDArray[np.float64]  # the anchor where that side was last seen


def anchor_points(
    boxes_xyxy: npt.NDArray[np.floating], anchor: Anchor, width: int, height: int
) -> npt.NDArray[np.float64]:
    """(N, 2) normalised anchor points of (N, 4) x1y1x2y2 boxes in pixels of a width x height frame."""
    fx, fy = ANCHORS[anchor]
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    x = boxes[:, 0] + fx * (boxes[:, 2] - boxes[:, 0])
    y = boxes[:, 1] + fy * (boxes[:, 3] - boxes[:, 1])
    return np.stack([x / width, y / height], axis=1)


def inside_polygon(points: npt.NDArray[np.float64], polygon: tuple[Point, ...]) -> npt.NDArray[np.bool_]:
    """(N,) whether each of (N, 2) points is inside `polygon` (even-odd rule; a ray cast to the right)."""
    poly = np.asarray(polygon, dtype=np.float64)
    xi, yi = poly[:, 0], poly[:, 1]
    xj, yj = np.roll(xi, 1), np.roll(yi, 1)
    x, y = points[:, :1], points[:, 1:2]
    spans = (yi > y) != (yj > y)  # the edge spans the point's height (never a horizontal edge)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = xi + (y - yi) * (xj - xi) / (yj - yi)
    return np.asarray(np.count_nonzero(spans & (x < x_cross), axis=1) % 2 == 1)


def _cross(o: npt.NDArray[np.float64], a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """z of (a - o) x (b - o): > 0 when b is on the right-hand side of o->a on the image (y down)."""
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


class Counter:
    """One stream's lines and zones; `update` once per processed frame, in order."""

    def __init__(self, lines: tuple[Line, ...] = (), zones: tuple[Zone, ...] = (), *, forget_after: int = 30):
        names = [line.name for line in lines] + [zone.name for zone in zones]
        if len(set(names)) != len(names):
            raise ValueError("line and zone names must be unique")
        self.lines, self.zones, self.forget_after = lines, zones, forget_after
        self.line_counts = {line.name: LineCount() for line in lines}
        self.zone_counts = {zone.name: ZoneCount() for zone in zones}
        self._sides: dict[tuple[str, int], _Side] = {}
        self._last_seen: dict[int, tuple[int, int]] = {}  # track id -> (frame, class id)

    def update(
        self,
        frame: int,
        boxes_xyxy: npt.NDArray[np.floating],
        class_ids: npt.NDArray[np.integer],
        track_ids: npt.NDArray[np.integer],
        width: int,
        height: int,
    ) -> list[CountEvent]:
        """The events of one frame: (N, 4) boxes in its pixels, their class and track ids (-1: untracked)."""
        tracked = np.asarray(track_ids) >= 0
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)[tracked]
        classes = np.asarray(class_ids)[tracked].tolist()
        tracks = np.asarray(track_ids)[tracked].tolist()
        for track_id, class_id in zip(tracks, classes, strict=True):
            self._last_seen[track_id] = (frame, class_id)
        events: list[CountEvent] = []
        for line in self.lines:
            points = anchor_points(boxes, line.anchor, width, height)
            for point, track_id, class_id in zip(points, tracks, classes, strict=True):
                if line.classes is None or class_id in line.classes:
                    events += self._line_step(line, frame, point, track_id, class_id)
        for zone in self.zones:
            points = anchor_points(boxes, zone.anchor, width, height)
            inside = inside_polygon(points, zone.polygon).tolist()
            for now_inside, track_id, class_id in zip(inside, tracks, classes, strict=True):
                if zone.classes is None or class_id in zone.classes:
                    events += self._zone_step(zone, frame, now_inside, track_id, class_id)
        return events + self._forget(frame)

    def _line_step(
        self, line: Line, frame: int, point: npt.NDArray[np.float64], track_id: int, class_id: int
    ) -> list[CountEvent]:
        start, end = np.asarray(line.start), np.asarray(line.end)
        side = int(np.sign(_cross(start, end, point)))
        if side == 0:  # on the line: keeps the side it had
            return []
        key = (line.name, track_id)
        before = self._sides.get(key)
        self._sides[key] = _Side(side, point)
        if before is None or before.side == side:
            return []
        # The anchor went from one side of the line to the other: through the segment, or past its end?
        if _cross(before.point, point, start) * _cross(before.point, point, end) > 0:
            return []
        direction: Direction = "in" if side > 0 else "out"
        count = self.line_counts[line.name]
        count.crossed[direction] += 1
        count.by_class.setdefault(class_id, Tally())[direction] += 1
        return [CountEvent("line.cross", line.name, frame, track_id, class_id, direction=direction)]

    def _zone_step(
        self, zone: Zone, frame: int, inside: bool, track_id: int, class_id: int
    ) -> list[CountEvent]:
        count = self.zone_counts[zone.name]
        if inside == (track_id in count.inside):
            return []
        if inside:
            count.inside.add(track_id)
            count.entered += 1
            return [CountEvent("zone.enter", zone.name, frame, track_id, class_id)]
        count.inside.discard(track_id)
        count.exited += 1
        return [CountEvent("zone.exit", zone.name, frame, track_id, class_id)]

    def _forget(self, frame: int) -> list[CountEvent]:
        """Tracks not seen for `forget_after` frames: their state goes, and they leave their zones."""
        gone = [(t, c) for t, (seen, c) in self._last_seen.items() if frame - seen >= self.forget_after]
        events = []
        for track_id, class_id in gone:
            del self._last_seen[track_id]
            for line in self.lines:
                self._sides.pop((line.name, track_id), None)
            for zone in self.zones:
                count = self.zone_counts[zone.name]
                if track_id in count.inside:
                    count.inside.discard(track_id)
                    count.exited += 1
                    events.append(CountEvent("zone.exit", zone.name, frame, track_id, class_id, lost=True))
        return events

    def counts(self) -> dict[str, dict[str, dict[str, object]]]:
        """Totals so far: per line `in`/`out` (and by class id), per zone `inside`/`entered`/`exited`."""
        return {
            "lines": {
                name: {
                    "in": c.crossed["in"],
                    "out": c.crossed["out"],
                    "by_class": {k: {"in": v["in"], "out": v["out"]} for k, v in sorted(c.by_class.items())},
                }
                for name, c in self.line_counts.items()
            },
            "zones": {
                name: {"inside": len(c.inside), "entered": c.entered, "exited": c.exited}
                for name, c in self.zone_counts.items()
            },
        }
