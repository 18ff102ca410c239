"""The synthetic tracking clips: reproducible, well-formed, and hard where they are meant to be."""

from __future__ import annotations

import numpy as np
import pytest

from bench.tracking_clips import ClipOptions, make_clip
from service.processing import box_iou

pytestmark = pytest.mark.unit


def test_a_seed_gives_the_same_clip_and_another_seed_another() -> None:
    a, b, c = make_clip(3), make_clip(3), make_clip(4)
    for frame in range(0, 150, 10):
        np.testing.assert_array_equal(a.boxes[frame], b.boxes[frame])
        np.testing.assert_array_equal(a.gt_ids[frame], b.gt_ids[frame])
    assert not all(np.array_equal(a.gt_boxes[f], c.gt_boxes[f]) for f in range(150))


def test_frames_are_well_formed() -> None:
    options = ClipOptions(frames=60)
    clip = make_clip(0, options)
    assert len(clip.gt_ids) == len(clip.boxes) == options.frames
    for gt_ids, gt_boxes, boxes, scores, classes in zip(
        clip.gt_ids, clip.gt_boxes, clip.boxes, clip.scores, clip.classes, strict=True
    ):
        assert len(set(gt_ids.tolist())) == len(gt_ids) == len(gt_boxes)
        assert len(boxes) == len(scores) == len(classes)
        for xyxy in (gt_boxes, boxes):
            assert (xyxy[:, 2:] >= xyxy[:, :2]).all()
            assert (xyxy >= 0).all() and (xyxy[:, [0, 2]] <= options.width).all()
        assert ((scores > 0) & (scores < 1)).all()
        assert ((classes >= 0) & (classes < options.classes)).all()


def test_the_detector_stand_in_misses_some_objects_and_adds_false_ones() -> None:
    clip = make_clip(0)
    found = false = 0
    for gt_boxes, boxes in zip(clip.gt_boxes, clip.boxes, strict=True):
        iou = box_iou(gt_boxes, boxes).reshape(len(gt_boxes), len(boxes))
        found += int((iou >= 0.5).any(axis=1).sum())
        false += int((iou < 0.1).all(axis=0).sum())
    recall = found / sum(map(len, clip.gt_ids))
    assert 0.75 < recall < 0.98
    assert false > 20
    assert 0.05 < np.mean(np.concatenate(clip.scores) < 0.5) < 0.4  # occlusion, blur, false positives


def test_crossing_pairs_share_a_lane_and_pass_each_other() -> None:
    clip = make_clip(1, ClipOptions(crossing_pairs=1))
    ids0 = clip.gt_ids[0].tolist()
    a, b = clip.gt_boxes[0][ids0.index(0)], clip.gt_boxes[0][ids0.index(1)]
    assert a[0] < b[0] and abs((a[1] + a[3]) - (b[1] + b[3])) / 2 < 30
    order = [
        np.sign(boxes[ids.tolist().index(0)][0] - boxes[ids.tolist().index(1)][0])
        for ids, boxes in zip(clip.gt_ids, clip.gt_boxes, strict=True)
        if 0 in ids and 1 in ids
    ]
    assert -1 in order and 1 in order  # box 0 starts left of box 1 and is right of it at some point
