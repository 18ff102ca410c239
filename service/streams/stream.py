"""One live stream: its source's reader thread, and a task on the event loop that takes each frame
the reader hands on, detects (through the batcher that serves `/detect`), tracks, counts the lines
and zones, and publishes the frame's results and events to the stream's hub.

A frame is converted and letterboxed in the decode pool, then queued like any request's image: a
full queue drops the frame (`overloaded`), as does a frame past its deadline (`timeout`) or a
failed batch (`failed`); the model is taken per frame, so a reload swaps it between frames. Every
processed frame's latency is measured from its capture (decoded at the reader) to its publication.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import numpy as np

from service.core.detector import Detector, Submission
from service.core.errors import (
    DeadlineExceeded,
    InferenceFailed,
    NotReady,
    Overloaded,
    ServiceError,
    UnknownModel,
)
from service.core.options import DetectParams
from service.core.request_spans import record_passes, timed
from service.core.results import class_name, tracked_detections_json
from service.core.state import ServiceState
from service.core.video import Frame, upright
from service.core.video_detection import frame_passes, merged_detections, track_frame, tracking_params
from service.processing import Detections
from service.streams.counting import Counter, CountEvent
from service.streams.hub import Hub, Message
from service.streams.reader import FrameBuffer, SourceFrame, SourceReader, SourceSettings, SourceState
from service.streams.sources import Source
from service.streams.spec import StreamSpec
from service.streams.webhook import WebhookSender
from service.tracing import Attributes, PassTrace, detach, recording
from service.tracking import ByteTracker

log = logging.getLogger(__name__)


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


WINDOW_S = 10.0  # processed fps: frames published over the last this many seconds
LATENCIES = 512  # end-to-end latencies kept for the status's percentiles
FINISHED = (SourceState.ENDED, SourceState.FAILED, SourceState.STOPPED)
DROP_REASONS = {
    Overloaded: "overloaded",
    DeadlineExceeded: "timeout",
    InferenceFailed: "failed",
    UnknownModel: "unloaded",  # the stream's model is not loaded (now)
}
# Every reason a wanted frame is not processed: the reader's (stale: a live source's newer frame
# took its place) and the stream's (the model not ready, and those above).
FRAME_DROP_REASONS = ("stale", "not_ready", *DROP_REASONS.values())


@dataclasses.dataclass
class _Model:
    """What depends on the model a frame ran on: built again when a reload changes it."""

    detector: Detector
    params: DetectParams
    counter: Counter | None


@dataclasses.dataclass(frozen=True)
class View:
    """A processed frame for those watching it drawn (`Stream.watch`)."""

    frame: int
    image: np.ndarray  # (h, w, 3) RGB
    detections: Detections
    track_ids: np.ndarray | None
    names: list[str]


class Stream:
    def __init__(
        self,
        stream_id: str,
        spec: StreamSpec,
        source: Source,
        state: ServiceState,
        settings: SourceSettings,
        *,
        check: Callable[[], None] = lambda: None,
        hub: Hub | None = None,
        webhook: WebhookSender | None = None,
        latency: Observer | None = None,
    ) -> None:
        """`latency`: observes each processed frame's capture-to-publication seconds (a histogram)."""
        self.id, self.spec, self.source, self._state = stream_id, spec, source, state
        self.created = time.time()
        self.hub = hub or Hub()
        self.webhook, self._latency = webhook, latency
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake(_: object = None) -> None:  # from the reader's thread
            loop.call_soon_threadsafe(self._ready.set)

        buffer = FrameBuffer(source.live, wake)
        self.reader = SourceReader(
            source.url, settings, buffer, wake, check=check, name=f"yolor-stream-{stream_id[:8]}"
        )
        self.processed = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.events = 0
        self._published: collections.deque[float] = collections.deque()
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCIES)
        self._model: _Model | None = None
        self._tracker: ByteTracker | None = None
        self._task: asyncio.Task[None] | None = None
        self._watchers = 0
        self._view: View | None = None
        self._new_view = asyncio.Event()

    def start(self) -> None:
        if self.webhook is not None:
            self.webhook.start()
        self.reader.start()
        self._task = asyncio.create_task(self._run(), name=f"stream {self.id}")

    async def stop(self) -> None:
        """Close the source (its thread is joined off the loop) and end the task and the listeners."""
        await asyncio.get_running_loop().run_in_executor(None, self.reader.stop)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.webhook is not None:
            await self.webhook.stop()
        self.end_listeners()

    def end_listeners(self) -> None:
        """Close the hub (its listeners end, new ones end at once) and release the watchers."""
        self.hub.close()
        self._wake_watchers()

    @property
    def state(self) -> SourceState:
        return self.reader.state

    async def _run(self) -> None:
        detach()  # created by POST /streams: its frames are not that request's
        try:
            while True:  # take before waiting: a frame put while the last one ran is not missed
                taken = self.reader.buffer.take()
                if taken is not None:
                    await self._process(taken)
                    continue
                if self.reader.state in FINISHED:
                    break
                await self._ready.wait()
                self._ready.clear()
        finally:
            self.hub.publish({"type": "state", "stream": self.id, "state": self.reader.state.value})
            if self.reader.state in FINISHED:
                self.end_listeners()

    async def _process(self, taken: SourceFrame) -> None:
        """One frame, traced (a trace of its own, when the sampler keeps it) while tracing is on."""
        if self._state.tracing is None:
            await self._process_frame(taken)
            return
        attributes: Attributes = {
            "yolor.stream.id": self.id,
            "yolor.stream.name": self.spec.name or self.id,
            "yolor.frame": taken.index,
        }
        traced = self._state.tracing.start("stream.frame", {}, attributes, kind="consumer")
        lost = sum(self.dropped.values())
        try:
            await self._process_frame(taken)
        finally:
            dropped = sum(self.dropped.values()) > lost
            traced.end({"yolor.frame.dropped": dropped}, error="dropped" if dropped else None)

    async def _process_frame(self, taken: SourceFrame) -> None:
        try:
            with (await self._state.take(self.spec.model, self.spec.version)).use() as detector:
                await self._detect(detector, taken)
        except NotReady:  # starting or reloading: this frame is skipped, the stream goes on
            self.dropped["not_ready"] += 1
        except ServiceError as e:
            reason = next((r for kind, r in DROP_REASONS.items() if isinstance(e, kind)), "failed")
            self.dropped[reason] += 1
            if reason == "failed":
                log.warning("stream %s: frame %d failed: %s", self.id, taken.index, e)
        except Exception:  # a bug: this frame is lost and logged, the stream goes on
            self.dropped["failed"] += 1
            log.exception("stream %s: frame %d failed", self.id, taken.index)

    def _model_for(self, detector: Detector) -> _Model:
        """Parameters, counter and tracker for `detector`'s model (kept while the model is the same)."""
        if self._model is None or self._model.detector is not detector:
            names = detector.manifest.class_names
            params = DetectParams.of(self.spec.options(), names)
            lines, zones = self.spec.counting(names)
            counter = Counter(lines, zones, forget_after=self._forget_after()) if lines or zones else None
            if self._model is None or self._model.detector.manifest.class_names != names:
                self._tracker = (
                    ByteTracker(self.spec.tracker_settings(self.spec.fps)) if self.spec.track else None
                )
            else:  # same classes: the counts go on
                counter = self._model.counter
            self._model = _Model(detector, params, counter)
        return self._model

    def _forget_after(self) -> int:
        """Frames after which a track is forgotten by the counter: the tracker's own buffer, in frames."""
        return max(1, round(self.spec.track_buffer * self.spec.fps / 30.0)) + 1

    async def _detect(self, detector: Detector, taken: SourceFrame) -> None:
        model = self._model_for(detector)
        params = tracking_params(model.params, self._tracker) if self._tracker is not None else model.params
        loop = asyncio.get_running_loop()

        def prepare() -> tuple[Frame, list[Any]]:
            frame = Frame(taken.index, taken.pts_s, upright(taken.frame))
            return frame, frame_passes(detector, frame, params)

        request = recording()  # this frame's trace, when sampled
        with detector.batcher.incoming(1, admit=True, background=True):  # frames: half the queue at most
            (frame, passes), start, end = await loop.run_in_executor(detector.pool, timed, prepare)
        deadline = time.monotonic() + detector.timeout_s
        submission = Submission(detector.batcher, detector.postprocessor.finish, deadline, background=True)
        traces = None if request is None else [PassTrace(request, request.span)] * len(passes)
        futures = submission.submit(passes, params, traces)
        try:
            outputs = [await f for f in futures]
        finally:
            for f in futures:
                f.cancel()
        if request is not None:
            request.record("letterbox", start, end, attributes={"yolor.passes": len(passes)})
            record_passes(request, [request.span] * len(outputs), outputs)
            request.span.set_attributes(detector.batcher.trace_attributes)
        detections = await merged_detections(detector, outputs, params)
        height, width = frame.image.shape[:2]
        track_ids = None
        if self._tracker is not None:
            detections, track_ids = track_frame(self._tracker, detections, model.params.conf)
        events = []
        if model.counter is not None and track_ids is not None:
            events = model.counter.update(
                frame.index, detections.boxes, detections.class_ids, track_ids, width, height
            )
        self._publish(
            taken, frame, detections, track_ids, events, detector.manifest.class_names, model.counter
        )

    def _publish(
        self,
        taken: SourceFrame,
        frame: Frame,
        detections: Detections,
        track_ids: np.ndarray | None,
        events: list[CountEvent],
        names: list[str],
        counter: Counter | None,
    ) -> None:
        now = time.time()
        latency = now - taken.captured
        self.latencies.append(latency)
        if self._latency is not None:
            self._latency.observe(latency)
        self.processed += 1
        self._published.append(time.monotonic())
        height, width = frame.image.shape[:2]
        items = tracked_detections_json(detections, track_ids, names)
        if self._watchers:
            self._view = View(frame.index, frame.image, detections, track_ids, names)
            self._wake_watchers()
        base = {"stream": self.id, "frame": frame.index, "captured": round(taken.captured, 6)}
        self.hub.publish({
            "type": "frame", **base, "pts_s": frame.pts_s, "width": width, "height": height,
            "latency_ms": round(latency * 1000, 2), "detections": items,
        })  # fmt: skip
        for event in events:
            self.events += 1
            message: Message = {
                "type": event.kind, **base, "name": event.name, "track_id": event.track_id,
                "class_id": event.class_id, "class_name": class_name(names, event.class_id),
            }  # fmt: skip
            if event.direction is not None:
                message["direction"] = event.direction
            if event.kind == "zone.exit":
                message["lost"] = event.lost
            if counter is not None:
                message["counts"] = counter.counts()
            self.hub.publish(message)
            if self.webhook is not None:
                self.webhook.offer(message)

    @contextlib.contextmanager
    def watch(self) -> Iterator[AsyncIterator[View]]:
        """The processed frames with their detections, newest first-come: a watcher that is slower than
        the stream skips frames. Frames are kept for drawing only while someone watches."""
        self._watchers += 1
        try:
            yield self._views()
        finally:
            self._watchers -= 1
            if not self._watchers:
                self._view = None

    async def _views(self) -> AsyncIterator[View]:
        last = None
        while True:
            view, woken = self._view, self._new_view
            if view is not None and view.frame != last:
                last = view.frame
                yield view
                continue
            if self.hub.closed:
                return
            await woken.wait()

    def _wake_watchers(self) -> None:
        woken, self._new_view = self._new_view, asyncio.Event()
        woken.set()

    def processed_fps(self) -> float:
        horizon = time.monotonic() - WINDOW_S
        while self._published and self._published[0] < horizon:
            self._published.popleft()
        return len(self._published) / WINDOW_S

    @property
    def counter(self) -> Counter | None:
        """The lines and zones counted (None: none, or no frame processed yet)."""
        return self._model.counter if self._model is not None else None

    def drops(self) -> collections.Counter[str]:
        """Frames wanted but not processed, by reason: the reader's (stale) and this task's."""
        return self.reader.stats.dropped + self.dropped

    def last_frame_age(self) -> float | None:
        """Seconds since the source's last frame (None: none yet)."""
        last = self.reader.stats.last_frame_at
        return None if last is None else time.monotonic() - last

    def status(self) -> dict[str, Any]:
        stats = self.reader.stats
        age = self.last_frame_age()
        latencies = np.asarray(self.latencies, dtype=np.float64) * 1000
        percentiles = np.percentile(latencies, [50, 99]).round(2).tolist() if latencies.size else [None, None]
        counter = self.counter
        return {
            "id": self.id,
            "name": self.spec.name,
            "source": self.source.public(),
            "live": self.source.live,
            "state": self.reader.state.value,
            "error": stats.error,
            "created": round(self.created, 3),
            "source_fps": None if stats.source_fps is None else round(stats.source_fps, 2),
            "processed_fps": round(self.processed_fps(), 2),
            "frames": {"decoded": stats.decoded, "skipped": stats.skipped, "processed": self.processed},
            "dropped": dict(self.drops()),
            "reconnects": stats.reconnects,
            "last_frame_age_s": None if age is None else round(age, 3),
            "latency_ms": {"p50": percentiles[0], "p99": percentiles[1]},
            "events": self.events,
            "counts": counter.counts() if counter is not None else None,
            "listeners": self.hub.listeners,
            "webhook": dataclasses.asdict(self.webhook.stats) if self.webhook is not None else None,
        }
