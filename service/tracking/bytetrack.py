"""ByteTrack (Zhang et al., ECCV 2022): every detection box associated, the low-score ones too.

The tracker runs on a frame's detections after NMS and before the user's `conf` filter, because its
second association needs the low-score boxes: an object half hidden by another is usually still
detected, with a low score, and that box keeps its track alive with the same id.

One `ByteTracker` per video or stream, fed frame by frame, `reset()` between clips. `update` returns
one id per input row (-1: no confirmed track), so the caller keeps its detection arrays as they are.

Association is per class: a track keeps the class of the detection that started it and only matches
detections of that class (`class_aware=False` ignores classes, as `trackers`' ByteTrack does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service.tracking.assignment import IntArray, iou_cost, linear_assignment
from service.tracking.kalman import KalmanFilter, Matrix, Vector, cxcywh_to_xyxy, xyxy_to_cxcywh


@dataclass(frozen=True)
class TrackerSettings:
    """ByteTrack's thresholds; the defaults are the paper's (its MOT17 configuration) but two:
    `match_thresh` and `low_score_revives_lost`, below.

    - `track_high_thresh`: detections scoring at least this go to the first association;
    - `track_low_thresh`: those in [low, high) go to the second; lower ones are ignored;
    - `new_track_thresh`: an unmatched high-score detection starts a track only from this score;
    - `match_thresh`: the largest cost (1 - IoU x score) of a first-association match. 0.9 where
      the paper has 0.8: a track lost for a few frames (missed, hidden) is predicted, not seen, and
      when its object reappears the prediction overlaps it less than the paper's 0.2 x score, so the
      object came back under a new id; the paper's pedestrians at 30 fps move little per frame
      (docs/benchmarks.md, "Tracking", measures both);
    - `track_buffer`: frames (at 30 fps) a lost track waits for a detection before it is dropped;
    - `frame_rate`: the video's, scaling `track_buffer` to the same time;
    - `class_aware`: a track matches only detections of its class;
    - `low_score_revives_lost`: the second association also offers low-score boxes to lost tracks.
      The paper's code offers them only to tracks matched in the previous frame; but a half hidden
      object flickers between missed and detected with a low score, and after one missed frame its
      track is lost, so the paper's rule drops the low-score boxes that would carry it through the
      occlusion (the gap the `trackers` package closes the same way). False to follow the paper.
    """

    track_high_thresh: float = 0.5
    track_low_thresh: float = 0.1
    new_track_thresh: float = 0.6
    match_thresh: float = 0.9
    track_buffer: int = 30
    frame_rate: float = 30.0
    class_aware: bool = True
    low_score_revives_lost: bool = True
    # Constants of the reference implementation: the second association (low-score boxes, no score
    # in the cost) and the confirmation of a track seen once, which must overlap well.
    low_match_thresh: float = 0.5
    confirm_match_thresh: float = 0.7
    # A tracked and a lost track overlapping this much are one object; the younger one is dropped.
    duplicate_iou: float = 0.85

    def __post_init__(self) -> None:
        if not 0 <= self.track_low_thresh <= self.track_high_thresh <= 1:
            raise ValueError("need 0 <= track_low_thresh <= track_high_thresh <= 1")
        if self.new_track_thresh < self.track_high_thresh:
            raise ValueError("new_track_thresh must be >= track_high_thresh (new tracks need high scores)")
        if self.track_buffer < 0 or self.frame_rate <= 0:
            raise ValueError("track_buffer must be >= 0 and frame_rate > 0")

    @property
    def max_frames_lost(self) -> int:
        """How many frames a lost track survives at this frame rate."""
        return int(self.frame_rate / 30.0 * self.track_buffer)


class TrackState(enum.Enum):
    NEW = "new"  # seen once, not confirmed: no id yet
    TRACKED = "tracked"  # matched in the latest frame
    LOST = "lost"  # confirmed, unmatched for up to max_frames_lost frames


@dataclass
class Track:
    """One object's Kalman state and bookkeeping. `track_id` is 0 until the track is confirmed."""

    mean: Vector
    covariance: Matrix
    class_id: int
    score: float
    start_frame: int
    last_frame: int
    state: TrackState = TrackState.NEW
    track_id: int = 0

    @property
    def box(self) -> Vector:
        """The current (predicted or corrected) box, xyxy."""
        return cxcywh_to_xyxy(self.mean[:4])


class _Frame(NamedTuple):
    """One update's detections, and the track each matched row went to."""

    boxes: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    classes: npt.NDArray[np.int64]
    matched: dict[int, Track]


@dataclass
class ByteTracker:
    """ByteTrack over one video: `update` once per frame, in order."""

    settings: TrackerSettings = field(default_factory=TrackerSettings)
    kalman: KalmanFilter = field(default_factory=KalmanFilter)
    frame: int = field(default=0, init=False)
    tracks: list[Track] = field(default_factory=list, init=False)  # NEW, TRACKED and LOST tracks
    _next_id: int = field(default=1, init=False, repr=False)

    def reset(self) -> None:
        """Forget every track and restart ids at 1 (a new clip)."""
        self.frame, self.tracks, self._next_id = 0, [], 1

    def update(self, boxes_xyxy: npt.ArrayLike, scores: npt.ArrayLike, class_ids: npt.ArrayLike) -> IntArray:
        """Advance one frame with its (N, 4) xyxy boxes, (N,) scores and (N,) class ids.

        Returns (N,) int ids: the confirmed track each detection belongs to, or -1 (below
        `track_low_thresh`, unmatched, or a track seen for the first time after the first frame).
        """
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        score = np.asarray(scores, dtype=np.float64).reshape(-1)
        classes = np.asarray(class_ids).reshape(-1).astype(np.int64)
        if not len(boxes) == len(score) == len(classes):
            raise ValueError(f"{len(boxes)} boxes, {len(score)} scores, {len(classes)} class ids")
        s = self.settings
        self.frame += 1
        frame = _Frame(boxes, score, classes, {})
        high = np.flatnonzero(score >= s.track_high_thresh)
        low = np.flatnonzero((score >= s.track_low_thresh) & (score < s.track_high_thresh))

        for track in self.tracks:
            if track.state is TrackState.LOST:  # a hidden object's size is not extrapolated
                track.mean[6:] = 0.0
            track.mean, track.covariance = self.kalman.predict(track.mean, track.covariance)
        confirmed = [t for t in self.tracks if t.state is not TrackState.NEW]
        new = [t for t in self.tracks if t.state is TrackState.NEW]

        # 1. High-score boxes against every confirmed track, tracked or lost.
        left_tracks, high = self._associate(confirmed, high, frame, s.match_thresh, with_score=True)
        # 2. Low-score boxes against the tracks still unmatched (the paper: only those tracked a frame ago).
        if not s.low_score_revives_lost:
            left_tracks = [t for t in left_tracks if t.state is TrackState.TRACKED]
        for track in self._associate(left_tracks, low, frame, s.low_match_thresh, with_score=False)[0]:
            track.state = TrackState.LOST
        # 3. Tracks seen once against the high-score boxes left: a second sighting confirms them.
        unconfirmed, high = self._associate(new, high, frame, s.confirm_match_thresh, with_score=True)
        # 4. New tracks from the high-score boxes left, confirmed at once on the first frame.
        for index in high[score[high] >= s.new_track_thresh]:
            mean, covariance = self.kalman.initiate(xyxy_to_cxcywh(boxes[index]))
            track = Track(mean, covariance, int(classes[index]), float(score[index]), self.frame, self.frame)
            self.tracks.append(track)
            if self.frame == 1:
                self._confirm(track)
                frame.matched[int(index)] = track

        dropped = {id(t) for t in unconfirmed}
        self.tracks = [
            t
            for t in self.tracks
            if id(t) not in dropped
            and not (t.state is TrackState.LOST and self.frame - t.last_frame > s.max_frames_lost)
        ]
        self._drop_duplicates()
        ids = np.full(len(boxes), -1, dtype=np.intp)
        alive = {id(t) for t in self.tracks}
        for index, track in frame.matched.items():
            if id(track) in alive:
                ids[index] = track.track_id
        return ids

    def _associate(
        self, tracks: list[Track], detections: IntArray, frame: _Frame, limit: float, *, with_score: bool
    ) -> tuple[list[Track], IntArray]:
        """Match `tracks` to the rows `detections` of `frame` and update the matched tracks; return
        the tracks and the rows left unmatched."""
        if not tracks or len(detections) == 0:
            return tracks, detections
        cost = iou_cost(np.stack([t.box for t in tracks]), frame.boxes[detections])
        if with_score:  # the reference's fuse_score: a confident box may overlap less
            cost = 1.0 - (1.0 - cost) * frame.scores[detections][None, :]
        if self.settings.class_aware:
            track_classes = np.array([t.class_id for t in tracks])
            cost[track_classes[:, None] != frame.classes[detections][None, :]] = np.inf
        result = linear_assignment(cost, limit)
        for row, col in result.matches:
            track, index = tracks[row], int(detections[col])
            measured = xyxy_to_cxcywh(frame.boxes[index])
            track.mean, track.covariance = self.kalman.update(track.mean, track.covariance, measured)
            track.score, track.last_frame = float(frame.scores[index]), self.frame
            if track.state is TrackState.NEW:
                self._confirm(track)
            track.state = TrackState.TRACKED
            frame.matched[index] = track
        return [tracks[i] for i in result.unmatched_rows], detections[result.unmatched_cols]

    def _confirm(self, track: Track) -> None:
        track.track_id, self._next_id = self._next_id, self._next_id + 1
        track.state = TrackState.TRACKED

    def _drop_duplicates(self) -> None:
        """Drop the younger of a tracked and a lost track covering the same object (the reference's
        `remove_duplicate_stracks`): the lost one would otherwise come back as a second id."""
        tracked = [t for t in self.tracks if t.state is TrackState.TRACKED]
        lost = [t for t in self.tracks if t.state is TrackState.LOST]
        if not tracked or not lost:
            return
        overlap = 1.0 - iou_cost(np.stack([t.box for t in tracked]), np.stack([t.box for t in lost]))
        drop: set[int] = set()
        for i, j in zip(*np.nonzero(overlap > self.settings.duplicate_iou), strict=True):
            a, b = tracked[i], lost[j]
            older_tracked = a.last_frame - a.start_frame >= b.last_frame - b.start_frame
            drop.add(id(b) if older_tracked else id(a))
        self.tracks = [t for t in self.tracks if id(t) not in drop]
