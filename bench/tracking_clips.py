"""Synthetic clips for measuring a tracker without a model: ground-truth tracks and a detector stand-in.

A clip is a set of boxes moving at nearly constant velocity (bouncing off the frame's edges), some
in pairs that cross each other on the same lane, some entering or leaving mid-clip, each at its own
depth so that a nearer box hides a farther one. The detector stand-in turns the ground truth of a
frame into what a real detector gives a tracker after NMS: jittered boxes, missed objects, low scores
for the half hidden (what ByteTrack's second association is for), none for the nearly fully hidden,
and false positives. Everything is drawn from one seed, so a clip is the same on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClipOptions:
    """The scene (`frames` at `width` x `height`, `objects` boxes of `min_side`..`max_side` px moving
    up to `max_speed` px per frame, `crossing_pairs` of them on shared lanes) and the detector."""

    frames: int = 150
    width: int = 960
    height: int = 540
    objects: int = 10
    crossing_pairs: int = 2
    classes: int = 3
    min_side: float = 30.0
    max_side: float = 110.0
    max_speed: float = 7.0
    jitter: float = 0.04  # standard deviation of each box edge, as a fraction of the box's side
    miss_rate: float = 0.05  # a visible object is not detected
    low_score_rate: float = 0.08  # a visible object is detected with a low score (blur, pose)
    hidden_visibility: float = 0.5  # below this visible fraction an object counts as half hidden
    hidden_miss_rate: float = 0.4  # a half hidden object is not detected (else: low score)
    gone_visibility: float = 0.15  # below this, never detected
    false_positives: float = 0.5  # mean false detections per frame


@dataclass(frozen=True)
class Clip:
    """Per frame: ground truth (`gt_ids`, `gt_boxes` xyxy) and detections (`boxes`, `scores`, `classes`)."""

    gt_ids: list[IntArray]
    gt_boxes: list[FloatArray]
    boxes: list[FloatArray]
    scores: list[FloatArray]
    classes: list[IntArray]


def _trajectories(rng: np.random.Generator, o: ClipOptions) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """(objects, frames, 4) xyxy boxes and (objects, frames) presence."""
    n, size = o.objects, np.array([o.width, o.height], dtype=np.float64)
    sides = rng.uniform(o.min_side, o.max_side, size=(n, 2))
    position = rng.uniform(0.1, 0.9, size=(n, 2)) * size
    angle = rng.uniform(0, 2 * np.pi, size=n)
    velocity = rng.uniform(1.0, o.max_speed, size=(n, 1)) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    for pair in range(min(o.crossing_pairs, n // 2)):  # two boxes towards each other on one lane
        a, b = 2 * pair, 2 * pair + 1
        lane = rng.uniform(0.2, 0.8) * o.height
        speed = 0.35 * o.width / (rng.uniform(0.3, 0.6) * o.frames)  # they meet within the clip
        position[a] = [0.15 * o.width, lane]
        position[b] = [0.85 * o.width, lane + rng.normal(0, 8)]
        velocity[a], velocity[b] = [speed, 0.0], [-speed, 0.0]
        sides[b, 1] = sides[a, 1] * rng.uniform(0.8, 1.25)  # similar heights: the hard case
    start = np.where(rng.random(n) < 0.7, 0, rng.integers(0, o.frames // 2, size=n))
    start[: 2 * o.crossing_pairs] = 0
    end = np.where(rng.random(n) < 0.7, o.frames, start + rng.integers(40, o.frames, size=n))
    end[: 2 * o.crossing_pairs] = o.frames
    boxes = np.zeros((n, o.frames, 4))
    for t in range(o.frames):
        boxes[:, t] = np.concatenate([position - sides / 2, position + sides / 2], axis=1)
        velocity += rng.normal(0, 0.1, size=velocity.shape)  # slow drift off the straight line
        position += velocity
        for axis in range(2):  # bounce off the edges
            out = (position[:, axis] < 0) | (position[:, axis] > size[axis])
            velocity[out, axis] *= -1
            position[:, axis] = np.clip(position[:, axis], 0, size[axis])
    frames = np.arange(o.frames)
    present = (frames[None, :] >= start[:, None]) & (frames[None, :] < end[:, None])
    return boxes, present


def _visible_fractions(boxes: FloatArray, depth: FloatArray, o: ClipOptions) -> FloatArray:
    """The fraction of each box not covered by nearer boxes or the frame's edge (a 4 px grid)."""
    cell = 4
    covered = np.zeros((o.height // cell + 1, o.width // cell + 1), dtype=bool)
    visible = np.zeros(len(boxes))
    for i in np.argsort(depth):  # nearest first
        x1, y1, x2, y2 = (boxes[i] / cell).round().astype(int)
        area = max(x2 - x1, 1) * max(y2 - y1, 1)
        region = covered[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)]
        visible[i] = (region.size - region.sum()) / area
        region[:] = True
    return visible


def _detect(
    rng: np.random.Generator, boxes: FloatArray, classes: IntArray, visible: FloatArray, o: ClipOptions
) -> tuple[FloatArray, FloatArray, IntArray]:
    """The detector stand-in on one frame's objects (boxes may be partly outside the frame)."""
    hidden = visible < o.hidden_visibility
    kept = (visible >= o.gone_visibility) & (
        rng.random(len(boxes)) >= np.where(hidden, o.hidden_miss_rate, o.miss_rate)
    )
    low = hidden | (rng.random(len(boxes)) < o.low_score_rate)
    scores = np.where(low, rng.uniform(0.15, 0.45, len(boxes)), rng.uniform(0.55, 0.95, len(boxes)))
    sides = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    jittered = boxes + rng.normal(0, o.jitter, size=boxes.shape) * sides
    n_false = rng.poisson(o.false_positives)
    corner = rng.uniform(0, 1, size=(n_false, 2)) * [o.width, o.height]
    false_boxes = np.concatenate([corner, corner + rng.uniform(o.min_side, o.max_side, (n_false, 2))], axis=1)
    false_scores = np.where(
        rng.random(n_false) < 0.1, rng.uniform(0.5, 0.7, n_false), rng.uniform(0.1, 0.5, n_false)
    )
    out_boxes = np.concatenate([jittered[kept], false_boxes])
    order = rng.permutation(len(out_boxes))  # a detector's output order says nothing about identity
    return (
        _clip_to_frame(out_boxes, o)[order],
        np.concatenate([scores[kept], false_scores])[order],
        np.concatenate([classes[kept], rng.integers(0, o.classes, n_false)])[order],
    )


def _clip_to_frame(boxes: FloatArray, o: ClipOptions) -> FloatArray:
    return np.clip(boxes, 0, [o.width, o.height, o.width, o.height])


def make_clip(seed: int, options: ClipOptions | None = None) -> Clip:
    """One clip from `seed`. Ground truth: the present objects at least half inside the frame, hidden
    or not (a tracker is expected to keep an id across an occlusion, not to see through it)."""
    o = options or ClipOptions()
    rng = np.random.default_rng(seed)
    boxes, present = _trajectories(rng, o)
    depth = rng.random(o.objects)
    object_classes = rng.integers(0, o.classes, size=o.objects)
    clip = Clip([], [], [], [], [])
    for t in range(o.frames):
        here = np.flatnonzero(present[:, t])
        frame_boxes = boxes[here, t]
        inside = _clip_to_frame(frame_boxes, o)
        area = np.prod(frame_boxes[:, 2:] - frame_boxes[:, :2], axis=1)
        shown = np.prod(np.maximum(inside[:, 2:] - inside[:, :2], 0), axis=1) >= 0.5 * area
        clip.gt_ids.append(here[shown].astype(np.int64))
        clip.gt_boxes.append(inside[shown])
        visible = _visible_fractions(frame_boxes, depth[here], o)
        detected = _detect(rng, frame_boxes, object_classes[here], visible, o)
        clip.boxes.append(detected[0])
        clip.scores.append(detected[1])
        clip.classes.append(detected[2].astype(np.int64))
    return clip
