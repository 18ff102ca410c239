"""Lines and zones against brute force: OpenCV's point-in-polygon, segment intersection written
out from its definition, on random walks of several tracks."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from service.streams.counting import Counter, CountEvent, Line, Zone, anchor_points, inside_polygon

W, H = 640, 480


def box_at(x: float, y: float, w: float = 40, h: float = 80) -> list[float]:
    """A box in pixels whose bottom centre is at normalised (x, y)."""
    cx, bottom = x * W, y * H
    return [cx - w / 2, bottom - h, cx + w / 2, bottom]


def feed(counter: Counter, frames: list[list[tuple[int, int, float, float]]]) -> list[CountEvent]:
    """Frames of (track id, class id, x, y) bottom centres; every event, in order."""
    events = []
    for index, rows in enumerate(frames):
        boxes = np.array([box_at(x, y) for _, _, x, y in rows], dtype=np.float32).reshape(-1, 4)
        classes = np.array([c for _, c, _, _ in rows], dtype=np.int64)
        tracks = np.array([t for t, _, _, _ in rows], dtype=np.int64)
        events += counter.update(index, boxes, classes, tracks, W, H)
    return events


def test_a_track_crossing_a_horizontal_line_down_is_in_and_back_up_is_out() -> None:
    counter = Counter((Line("door", (0.0, 0.5), (1.0, 0.5)),))
    ys = [0.3, 0.4, 0.55, 0.7, 0.6, 0.45, 0.2]
    events = feed(counter, [[(1, 0, 0.5, y)] for y in ys])
    assert [(e.kind, e.frame, e.direction) for e in events] == [
        ("line.cross", 2, "in"),
        ("line.cross", 5, "out"),
    ]
    assert counter.counts()["lines"]["door"] == {"in": 1, "out": 1, "by_class": {0: {"in": 1, "out": 1}}}


def test_passing_beside_the_segment_is_no_crossing() -> None:
    counter = Counter((Line("short", (0.2, 0.5), (0.4, 0.5)),))
    assert feed(counter, [[(1, 0, 0.8, y)] for y in (0.3, 0.7, 0.3)]) == []
    assert feed(counter, [[(2, 0, 0.3, y)] for y in (0.3, 0.7)])[0].direction == "in"


def test_an_anchor_on_the_line_keeps_its_side() -> None:
    counter = Counter((Line("l", (0.0, 0.5), (1.0, 0.5)),))
    # down onto the line, back up: no crossing; down onto it, then on below: one
    events = feed(counter, [[(1, 0, 0.5, y)] for y in (0.4, 0.5, 0.4, 0.5, 0.5, 0.6)])
    assert [(e.frame, e.direction) for e in events] == [(5, "in")]


def test_class_filters_and_untracked_boxes() -> None:
    counter = Counter((Line("l", (0.0, 0.5), (1.0, 0.5), classes=frozenset({2})),))
    events = feed(
        counter,
        [
            [(1, 0, 0.5, 0.4), (2, 2, 0.3, 0.4), (-1, 2, 0.7, 0.4)],
            [(1, 0, 0.5, 0.6), (2, 2, 0.3, 0.6), (-1, 2, 0.7, 0.6)],
        ],
    )
    assert [(e.track_id, e.class_id) for e in events] == [(2, 2)]


def test_anchor_choice() -> None:
    boxes = np.array([[10, 20, 30, 60]], dtype=np.float32)
    assert anchor_points(boxes, "center", 100, 100).tolist() == [[0.2, 0.4]]
    assert anchor_points(boxes, "bottom_center", 100, 100).tolist() == [[0.2, 0.6]]
    assert anchor_points(boxes, "top_left", 100, 200).tolist() == [[0.1, 0.1]]


def _orientation(
    p: tuple[Fraction, Fraction], q: tuple[Fraction, Fraction], r: tuple[Fraction, Fraction]
) -> int:
    v = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    return (v > 0) - (v < 0)


def brute_crossings(line: Line, walk: list[tuple[float, float]]) -> list[tuple[int, str]]:
    """(frame, direction) of each step that properly crosses the line's segment (exact arithmetic)."""
    a, b = (tuple(map(Fraction, line.start)), tuple(map(Fraction, line.end)))
    out = []
    for i in range(1, len(walk)):
        p, q = tuple(map(Fraction, walk[i - 1])), tuple(map(Fraction, walk[i]))
        o1, o2 = _orientation(a, b, p), _orientation(a, b, q)  # type: ignore[arg-type]
        o3, o4 = _orientation(p, q, a), _orientation(p, q, b)  # type: ignore[arg-type]
        if o1 * o2 < 0 and o3 * o4 <= 0:
            out.append((i, "in" if o2 > 0 else "out"))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_random_walks_cross_as_brute_force_says(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = tuple(
        Line(f"l{i}", tuple(rng.uniform(0.1, 0.9, 2)), tuple(rng.uniform(0.1, 0.9, 2))) for i in range(3)
    )
    walks = {
        t: np.clip(np.cumsum(rng.normal(0, 0.04, (200, 2)), axis=0) + rng.uniform(0.3, 0.7, 2), 0.01, 0.99)
        for t in range(6)
    }
    counter = Counter(lines, forget_after=1000)
    events = feed(counter, [[(t, 0, *walks[t][i]) for t in walks] for i in range(200)])
    for line in lines:
        for t, walk in walks.items():
            # the boxes' anchor goes through float32 pixels: compare with the points the counter saw
            seen = anchor_points(
                np.array([box_at(x, y) for x, y in walk], dtype=np.float32), "bottom_center", W, H
            )
            expected = brute_crossings(line, [tuple(p) for p in seen.tolist()])
            got = [(e.frame, e.direction) for e in events if e.name == line.name and e.track_id == t]
            assert got == expected
    assert sum(c["in"] + c["out"] for c in counter.counts()["lines"].values()) == len(events) > 0


@pytest.mark.parametrize("seed", range(5))
def test_inside_polygon_agrees_with_opencv(seed: int) -> None:
    rng = np.random.default_rng(seed)
    polygon = tuple(map(tuple, rng.uniform(0, 1, (7, 2)).tolist()))  # often self-intersecting: even-odd
    points = rng.uniform(0, 1, (2000, 2))
    ours = inside_polygon(points, polygon)
    contour = np.array(polygon, dtype=np.float32).reshape(-1, 1, 2)
    theirs = np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in points])
    clear = np.abs(theirs) > 1e-6  # OpenCV's test is the even-odd rule too; not within float noise of an edge
    assert (ours[clear] == (theirs[clear] > 0)).all()


def test_zone_entries_and_exits_follow_membership_and_lost_tracks_leave() -> None:
    zone = Zone("yard", ((0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)))
    counter = Counter(zones=(zone,), forget_after=3)
    frames = [
        [(1, 0, 0.5, 0.5)],  # born inside: enters
        [(1, 0, 0.9, 0.5), (2, 1, 0.1, 0.1)],  # 1 leaves
        [(1, 0, 0.5, 0.5), (2, 1, 0.5, 0.5)],  # both in
        [(2, 1, 0.5, 0.6)],  # 1 unseen from here
        [(2, 1, 0.5, 0.6)],
        [(2, 1, 0.5, 0.6)],  # frame 5: 1 last seen at 2, forgotten: exits, lost
    ]
    events = feed(counter, frames)
    assert [(e.kind, e.frame, e.track_id, e.lost) for e in events] == [
        ("zone.enter", 0, 1, False),
        ("zone.exit", 1, 1, False),
        ("zone.enter", 2, 1, False),
        ("zone.enter", 2, 2, False),
        ("zone.exit", 5, 1, True),
    ]
    assert counter.counts()["zones"]["yard"] == {"inside": 1, "entered": 3, "exited": 2}


@pytest.mark.parametrize("seed", range(3))
def test_random_walks_zone_occupancy_is_entered_minus_exited(seed: int) -> None:
    rng = np.random.default_rng(seed)
    zone = Zone("z", tuple(map(tuple, rng.uniform(0.1, 0.9, (5, 2)).tolist())))
    counter = Counter(zones=(zone,))
    walks = np.clip(np.cumsum(rng.normal(0, 0.05, (100, 4, 2)), axis=0) + 0.5, 0, 1)
    for i in range(100):
        feed_rows = [(t, 0, *walks[i, t]) for t in range(4)]
        feed(counter, [feed_rows])  # one frame at a time: index 0 each call, forgetting never fires
        z = counter.counts()["zones"]["z"]
        points = anchor_points(
            np.array([box_at(x, y) for _, _, x, y in feed_rows], dtype=np.float32), "bottom_center", W, H
        )
        assert z["inside"] == int(inside_polygon(points, zone.polygon).sum()) == z["entered"] - z["exited"]


def test_bad_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="normalised"):
        Line("l", (0, 0), (1.5, 0))
    with pytest.raises(ValueError, match="same point"):
        Line("l", (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="at least 3"):
        Zone("z", ((0, 0), (1, 1)))
    with pytest.raises(ValueError, match="anchor"):
        Line("l", (0, 0), (1, 1), anchor="feet")
    with pytest.raises(ValueError, match="unique"):
        Counter((Line("a", (0, 0), (1, 1)),), (Zone("a", ((0, 0), (1, 0), (1, 1))),))


def test_every_anchor_name_has_its_point() -> None:
    from typing import get_args

    from service.streams.counting import ANCHORS, Anchor

    assert set(get_args(Anchor)) == set(ANCHORS)
