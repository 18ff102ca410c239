"""ByteTracker's invariants on scripted scenes: what keeps an id, what starts one, what ends one."""

from __future__ import annotations

import numpy as np
import pytest

from service.tracking import ByteTracker, TrackerSettings

pytestmark = pytest.mark.unit


def box(cx: float, cy: float, w: float = 40, h: float = 60) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def step(
    tracker: ByteTracker, boxes: list[list[float]], scores: list[float], classes: list[int] | None = None
) -> list[int]:
    """One update; the ids as a list."""
    return tracker.update(np.array(boxes).reshape(-1, 4), scores, classes or [0] * len(boxes)).tolist()


def test_a_linear_mover_keeps_its_id_through_missed_frames() -> None:
    tracker = ByteTracker(TrackerSettings(track_buffer=30))
    seen = []
    for t in range(60):
        if 20 <= t < 40:  # 20 frames without a detection, fewer than the buffer's 30
            assert step(tracker, [], []) == []
            continue
        seen += step(tracker, [box(50 + 6 * t, 100 + 2 * t)], [0.9])
    assert seen == [1] * 40


def test_a_lost_track_expires_after_track_buffer_frames() -> None:
    def ids_after_gap(gap: int) -> list[int]:
        tracker = ByteTracker(TrackerSettings(track_buffer=10))
        first = [step(tracker, [box(100, 100)], [0.9])[0] for _ in range(5)]
        for _ in range(gap):
            step(tracker, [], [])
        return first + [step(tracker, [box(100, 100)], [0.9])[0] for _ in range(2)]

    assert ids_after_gap(10) == [1] * 7  # lost for 10 frames: still there
    # lost for 11: dropped; the box starts a new track, unconfirmed on its first sighting
    assert ids_after_gap(11) == [1] * 5 + [-1, 2]


def test_two_crossing_objects_keep_their_ids() -> None:
    tracker = ByteTracker()
    a_ids, b_ids = [], []
    for t in range(40):
        a, b = box(100 + 8 * t, 200), box(420 - 8 * t, 204)  # they pass each other at t = 20
        front_b = 16 <= t <= 24  # b hides a: a is detected with a low score
        a_score, b_score = (0.3, 0.9) if front_b else (0.9, 0.85)
        ids = step(tracker, [b, a], [b_score, a_score])  # order changes nothing
        b_ids.append(ids[0])
        a_ids.append(ids[1])
    assert set(a_ids) == {a_ids[0]} and set(b_ids) == {b_ids[0]} and a_ids[0] != b_ids[0]


def test_a_low_score_box_continues_a_track_but_never_starts_one() -> None:
    tracker = ByteTracker()
    ids = [step(tracker, [box(100 + 5 * t, 100)], [0.9 if t < 5 else 0.3])[0] for t in range(15)]
    assert ids == [1] * 15
    lonely = ByteTracker()
    assert [step(lonely, [box(300, 300)], [0.45])[0] for _ in range(10)] == [-1] * 10
    assert lonely.tracks == []


def test_a_low_score_box_revives_a_lost_track_unless_the_paper_rule_is_asked_for() -> None:
    def ids(settings: TrackerSettings) -> list[int]:
        tracker = ByteTracker(settings)
        seen = [step(tracker, [box(100 + 5 * t, 100)], [0.9])[0] for t in range(5)]
        step(tracker, [], [])  # one missed frame: the track is lost
        return seen + [step(tracker, [box(130 + 5 * t, 100)], [0.3])[0] for t in range(3)]

    assert ids(TrackerSettings()) == [1] * 8
    assert ids(TrackerSettings(low_score_revives_lost=False)) == [1] * 5 + [-1] * 3


def test_a_new_object_is_confirmed_on_its_second_sighting_after_the_first_frame() -> None:
    tracker = ByteTracker()
    assert step(tracker, [box(100, 100)], [0.9]) == [1]
    assert step(tracker, [box(100, 100), box(400, 400)], [0.9, 0.9]) == [1, -1]
    assert step(tracker, [box(100, 100), box(400, 400)], [0.9, 0.9]) == [1, 2]
    tracker.reset()
    assert step(tracker, [box(400, 400)], [0.9]) == [1]


def test_a_first_association_match_needs_overlap_times_score_above_one_minus_match_thresh() -> None:
    def second_id(score: float) -> int:
        tracker = ByteTracker(TrackerSettings(match_thresh=0.8))
        step(tracker, [box(100, 100, 40, 40)], [0.9])
        # IoU 0.3 with the (still) predicted box: matched when 0.3 * score >= 1 - 0.8
        shifted = box(100 + 40 * (1 - 0.6 / 1.3), 100, 40, 40)
        return step(tracker, [shifted], [score])[0]

    assert second_id(0.95) == 1
    assert second_id(0.62) == -1  # 0.3 * 0.62 < 0.2: a new, unconfirmed track


def test_a_lost_track_under_an_older_tracked_one_is_dropped() -> None:
    tracker = ByteTracker()
    for _ in range(3):  # a: still at (100, 100) for three frames, then gone
        step(tracker, [box(100, 100)], [0.9])
    # b comes slowly from the right (no overlap at first) and stops 2 px from a: IoU 38 / 42
    b_ids = [step(tracker, [box(144 - 2 * t, 100)], [0.9])[0] for t in range(22)]
    assert b_ids == [-1] + [2] * 21
    assert [t.track_id for t in tracker.tracks] == [2]  # a, lost under b and younger, is gone


def test_a_track_keeps_its_class() -> None:
    tracker = ByteTracker()
    assert step(tracker, [box(100, 100)], [0.9], [3]) == [1]
    assert step(tracker, [box(100, 100)], [0.9], [5]) == [-1]  # same place, another class
    agnostic = ByteTracker(TrackerSettings(class_aware=False))
    step(agnostic, [box(100, 100)], [0.9], [3])
    assert step(agnostic, [box(100, 100)], [0.9], [5]) == [1]


def test_ids_are_unique_in_every_frame_of_a_crowded_random_scene() -> None:
    rng = np.random.default_rng(0)
    centers = rng.uniform(50, 450, size=(30, 2))
    velocity = rng.normal(0, 4, size=(30, 2))
    tracker = ByteTracker()
    for t in range(80):
        present = rng.random(30) > 0.2
        centers_t = centers[present] + velocity[present] * t + rng.normal(0, 3, size=(present.sum(), 2))
        boxes = [box(x, y) for x, y in centers_t] + [box(*rng.uniform(0, 500, 2)) for _ in range(3)]
        scores = rng.uniform(0.05, 1.0, size=len(boxes))
        ids = np.array(step(tracker, boxes, scores.tolist()))
        tracked = ids[ids >= 0]
        assert len(set(tracked.tolist())) == len(tracked)
        assert (ids[scores < tracker.settings.track_low_thresh] == -1).all()


def test_settings_refuse_new_tracks_from_low_scores() -> None:
    with pytest.raises(ValueError, match="new_track_thresh"):
        TrackerSettings(track_high_thresh=0.5, new_track_thresh=0.4)
    assert TrackerSettings(track_buffer=30, frame_rate=15).max_frames_lost == 15
