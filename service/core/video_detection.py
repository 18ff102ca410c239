"""Detections for the frames of a clip, in order, as they are ready: a clip's frames go through the
same batcher as `/detect`'s images, a few batches at a time.

Frames are decoded and letterboxed in the decode pool a batch at a time (one call at a time per
clip), submitted as one group (so they fill a batch together), and at most `workers + 2` batches of
one clip wait in the queue or run: other requests' images interleave with a long clip, and its
frames are never all in memory. Each batch of frames has its own deadline (the request timeout from
its submission), so a long clip is bounded per batch, not as a whole. Closing the iterator (the
client went away) gives up the clip's queued frames and stops its decoding.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.core.batcher import BatchOutput
from service.core.detector import Detector, Submission
from service.core.errors import ServiceError
from service.core.images import Decoded
from service.core.options import DetectParams
from service.core.preprocess import Pass, Upload
from service.core.request_spans import record_frames
from service.core.video import Frame, VideoClip
from service.processing import Detections
from service.tracing import PassTrace, recording
from service.tracking import ByteTracker


@dataclass(frozen=True)
class FrameDetections:
    frame: int  # the frame's index in the clip (every frame counted, processed or not)
    pts_s: float | None
    width: int
    height: int
    detections: Detections  # frame pixels
    image: npt.NDArray[np.uint8] | None = None  # the decoded frame, when kept (to draw on)
    track_ids: npt.NDArray[np.int64] | None = None  # with a tracker: one per detection, -1 untracked


@dataclass
class TrackRecord:
    """One track over a clip: its class and the frames it was seen in (first, last, how many)."""

    class_id: int
    first_frame: int
    last_frame: int
    frames: int = 1


class TrackBook:
    """Every track id a clip's tracker gave out, as the frames come (the stream's summary)."""

    def __init__(self) -> None:
        self.tracks: dict[int, TrackRecord] = {}

    def add(self, frame: int, track_ids: npt.NDArray[np.int64], class_ids: npt.NDArray[np.int64]) -> None:
        for track_id, class_id in zip(track_ids.tolist(), class_ids.tolist(), strict=True):
            if track_id < 0:
                continue
            record = self.tracks.get(track_id)
            if record is None:
                self.tracks[track_id] = TrackRecord(class_id, frame, frame)
            else:
                record.last_frame, record.frames = frame, record.frames + 1


@dataclass(frozen=True)
class _Prepared:
    frame: Frame
    passes: list[Pass]


async def detect_frames(
    detector: Detector,
    clip: VideoClip,
    params: DetectParams,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    keep_images: bool = False,
    tracker: ByteTracker | None = None,
    book: TrackBook | None = None,
) -> AsyncGenerator[FrameDetections, None]:
    """Every `stride`-th frame's detections, in order, while later frames are decoded and run.
    The clip is closed at the end (once no decoding of it is running: a client that goes away
    cancels the stream while a batch of frames may be decoding in the pool).

    With a `tracker` (fresh for this clip), each frame's detections down to its `track_low_thresh`
    go through it in frame order, then the request's `conf` applies: ByteTrack's second association
    needs the low-score boxes. `book` collects the tracks.

    Raises (from the frame where it happens) InvalidVideo, VideoTooLong, TooManyPixels, Overloaded,
    ShuttingDown, DeadlineExceeded and InferenceFailed."""
    wanted, tiled = params, params.tile.mode != "off"
    if tracker is not None:
        params = tracking_params(params, tracker)
    loop = asyncio.get_running_loop()
    frames = clip.frames(stride, max_frames)
    # A sliced frame is a group of passes of its own (its windows and the whole frame).
    size = 1 if tiled else detector.batcher.max_batch_size
    # Two batches beyond those the backend runs: a batch is waiting whenever one finishes, while the
    # next is decoded beside two busy inference threads (one spare: measured in docs/benchmarks.md,
    # "Video").
    ahead = detector.batcher.workers + 2
    pending: collections.deque[tuple[float, list[tuple[Frame, list[asyncio.Future[BatchOutput]]]]]]
    pending = collections.deque()  # each group of frames: when its decoding was asked for, its futures
    request = recording()  # a traced request: a span per group of frames (`record_frames`)
    metrics = detector.metrics
    exhausted = False
    job: Future[tuple[list[_Prepared], ServiceError | None]] | None = None  # the decode in the pool
    error: ServiceError | None = None

    def prepare(count: int) -> tuple[list[_Prepared], ServiceError | None]:
        """Decode pool: the next `count` frames (fewer at the end), letterboxed, and the error that
        ended the clip early, if one did (the frames before it are still answered)."""
        start, read = time.monotonic(), clip.read
        taken, error = _take(frames, count)
        try:
            batch = [_Prepared(f, frame_passes(detector, f, params)) for f in taken]
        except ServiceError as e:  # a frame cut into more windows than allowed
            batch, error = [], e
        if batch:
            metrics.video_decode.observe((time.monotonic() - start) / len(batch))
        metrics.video_frames.labels(state="decoded").inc(clip.read - read)
        metrics.video_frames.labels(state="skipped").inc(clip.read - read - len(batch))
        return batch, error

    try:
        while pending or not exhausted:
            while not exhausted and len(pending) < ahead:
                asked = time.monotonic()
                with detector.batcher.incoming(size):
                    job = detector.pool.submit(prepare, size)
                    batch, error = await asyncio.wrap_future(job, loop=loop)
                exhausted = len(batch) < size or error is not None
                if batch:
                    submission = Submission(
                        detector.batcher, detector.postprocessor.finish, time.monotonic() + detector.timeout_s
                    )
                    passes = [q for p in batch for q in p.passes]
                    traces = None if request is None else [PassTrace(request, request.span)] * len(passes)
                    futures = iter(submission.submit(passes, params, traces))
                    pending.append((asked, [(p.frame, [next(futures) for _ in p.passes]) for p in batch]))
            if not pending:
                break
            asked, chunk = pending.popleft()
            answered: list[BatchOutput] = []
            found, whole = 0, False
            try:
                for frame, group in chunk:
                    outputs = [await future for future in group]
                    answered += outputs
                    metrics.video_frames.labels(state="processed").inc()
                    height, width = frame.image.shape[:2]
                    kept = frame.image if keep_images else None
                    detections, track_ids = await merged_detections(detector, outputs, params), None
                    if tracker is not None:
                        detections, track_ids = track_frame(tracker, detections, wanted.conf)
                        if book is not None:
                            book.add(frame.index, track_ids, detections.class_ids)
                    metrics.detections.inc(len(detections))
                    found += len(detections)
                    yield FrameDetections(
                        frame.index, frame.pts_s, width, height, detections, kept, track_ids
                    )
                whole = True
            finally:
                if request is not None and answered:
                    indexes = [frame.index for frame, _ in chunk]
                    cut = None if whole else "the clip's answer ended in this group"
                    record_frames(request, asked, indexes, answered, found, error=cut)
        if error is not None:
            raise error
    finally:
        for _, left in pending:  # the batcher skips what was not run
            for _, group in left:
                for future in group:
                    future.cancel()

        def release() -> None:
            frames.close()
            clip.close()

        if job is not None and not job.done():  # not under its own decoding: when that ends, in its thread
            job.add_done_callback(lambda _: release())
        else:
            release()


def tracking_params(params: DetectParams, tracker: ByteTracker) -> DetectParams:
    """`params` down to the tracker's `track_low_thresh`: its second association needs the low-score
    boxes (the request's `conf` applies after it, in `track_frame`)."""
    return dataclasses.replace(params, conf=min(params.conf, tracker.settings.track_low_thresh))


async def merged_detections(
    detector: Detector, outputs: list[BatchOutput], params: DetectParams
) -> Detections:
    """A frame's detections from its passes' outputs: a sliced frame's windows and whole frame merged
    (in the decode pool), else its one output's."""
    if len(outputs) == 1:
        only: Detections = outputs[0].output.detections
        return only
    parts = [o.output.detections for o in outputs]
    merged = await asyncio.get_running_loop().run_in_executor(
        detector.pool, detector.postprocessor.merge, parts, params
    )
    return merged.detections


def track_frame(
    tracker: ByteTracker, detections: Detections, conf: float
) -> tuple[Detections, npt.NDArray[np.int64]]:
    """The frame through the tracker, then only the detections scoring above `conf`, with their ids."""
    ids = tracker.update(detections.boxes, detections.scores, detections.class_ids).astype(np.int64)
    keep = detections.scores > conf
    kept = Detections(detections.boxes[keep], detections.scores[keep], detections.class_ids[keep])
    return kept, ids[keep]


def _take(frames: Iterator[Frame], count: int) -> tuple[list[Frame], ServiceError | None]:
    taken: list[Frame] = []
    try:
        for frame in frames:
            taken.append(frame)
            if len(taken) == count:
                break
    except ServiceError as e:  # the clip's end: corrupt, or past a limit
        return taken, e
    return taken, None


def frame_passes(detector: Detector, frame: Frame, params: DetectParams) -> list[Pass]:
    """The frame's input tensors: a sliced frame's windows (within the per-image limit), then always
    the whole frame."""
    height, width = frame.image.shape[:2]
    size = detector.manifest.input_size
    windows = params.tile.windows(height, width, input_size=size, max_tiles=detector.max_tiles)
    upload = Upload(Decoded(frame.image, height, width), windows)
    return detector.preprocessor.passes(upload, [*windows, None])
