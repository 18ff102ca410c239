"""VideoClip: frames read as players show them (the display matrix applied), every stride-th one,
and the limits checked against what the container declares."""

from __future__ import annotations

import io

import numpy as np
import pytest

from service.core.errors import VideoTooLong
from service.core.video import VideoClip, VideoLimits
from tests.support.video import PORTRAIT, decoded_frames, make_clip, sample_frames, with_display_matrix

pytest.importorskip("av")

LIMITS = VideoLimits(max_frames=1000, max_seconds=60.0, max_pixels=1 << 30)


def _read(clip: bytes, stride: int = 1, limits: VideoLimits = LIMITS) -> list[np.ndarray]:
    video = VideoClip(io.BytesIO(clip), limits)
    try:
        return [frame.image for frame in video.frames(stride)]
    finally:
        video.close()


def test_frames_are_the_decoded_frames_every_stride():
    clip = make_clip(sample_frames(6))
    want = decoded_frames(clip)
    got = _read(clip, stride=2)
    assert len(got) == 3
    for g, w in zip(got, want[::2], strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(
    ("matrix", "turns"),
    [
        (PORTRAIT, -1),  # a phone's portrait clip: shown turned 90 degrees clockwise
        ((0, 0xFFFF0000, 0, 0x00010000, 0, 0, 0, 0, 0x40000000), 1),  # counter-clockwise
        ((0xFFFF0000, 0, 0, 0, 0xFFFF0000, 0, 0, 0, 0x40000000), 2),  # upside down
    ],
)
def test_a_rotated_clip_is_read_upright(matrix, turns):
    clip = make_clip(sample_frames(3))
    stored = decoded_frames(clip)
    got = _read(with_display_matrix(clip, matrix))
    for g, s in zip(got, stored, strict=True):
        np.testing.assert_array_equal(g, np.rot90(s, turns))
    assert got[0].shape == ((192, 256, 3) if turns % 2 else (256, 192, 3))


def test_declared_frames_over_the_limit_are_refused_at_open():
    clip = make_clip(sample_frames(6))
    with pytest.raises(VideoTooLong, match="6 frames"):
        VideoClip(io.BytesIO(clip), VideoLimits(max_frames=5, max_seconds=60.0, max_pixels=1 << 30))
