"""The spans of a traced detection request's images (service.tracing), from the times the detector
and the batcher measured: per image an `image` span with its `decode` and `letterbox`, and for each
pass through the batcher its `queue.wait`, `inference` (linked to its batch's span) and
`postprocess`; a sliced image's passes each under a `tile` span, then its `merge`.

Made on the event loop: the worker threads only take times (`timed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from service.core.batcher import BatchOutput
from service.core.postprocess import Postprocessed
from service.core.preprocess import Upload
from service.core.tiling import Window
from service.tracing import Attributes, PassTrace, RequestTrace

if TYPE_CHECKING:
    from opentelemetry.trace import Span

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """`fn()` and the monotonic times it started and ended (run in a worker thread)."""
    start = time.monotonic()
    result = fn()
    return result, start, time.monotonic()


def record_passes(
    request: RequestTrace, parents: Sequence[Span], outputs: Sequence[BatchOutput]
) -> list[float]:
    """Each pass's `queue.wait`, `inference` and (when its output is post-processed) `postprocess`,
    under its parent; the time each pass ended."""
    ends = []
    for parent, out in zip(parents, outputs, strict=True):
        queued = out.started - out.queue_s
        request.record("queue.wait", queued, out.started, parent=parent)
        attributes = {"yolor.batch.id": out.batch_id, "yolor.batch.size": out.batch_size}
        links = [out.batch_span] if out.batch_span is not None else []
        done = out.started + out.inference_s
        request.record("inference", out.started, done, parent=parent, attributes=attributes, links=links)
        if isinstance(out.output, Postprocessed):
            done = out.output.began + out.output.seconds
            request.record("postprocess", out.output.began, done, parent=parent)
        ends.append(done)
    return ends


def record_frames(
    request: RequestTrace,
    start: float,
    frames: Sequence[int],
    outputs: Sequence[BatchOutput],
    detections: int,
    *,
    error: str | None = None,
) -> None:
    """One span for a group of a clip's frames, from the request for their decoding to their last
    answer, linked to the batches that ran them (a frame's own stages are not spanned: a long clip
    would make thousands)."""
    ends = [o.started + o.inference_s for o in outputs]
    ends += [o.output.began + o.output.seconds for o in outputs if isinstance(o.output, Postprocessed)]
    spans = [o.batch_span for o in outputs if o.batch_span is not None]
    batches = {(span.trace_id, span.span_id): span for span in spans}  # each batch once
    attributes: Attributes = {
        "yolor.frames.first": frames[0],
        "yolor.frames": len(frames),
        "yolor.passes": len(outputs),
        "yolor.detections": detections,
    }
    links = list(batches.values())
    request.record("frames", start, max(ends), attributes=attributes, links=links, error=error)


class ImageSpans:
    """The spans of one image of a traced request, opened as it is read and closed with its answer."""

    def __init__(self, request: RequestTrace, index: int, size: int, start: float) -> None:
        self.request = request
        attributes = {"yolor.image.index": index, "yolor.image.bytes": size}
        self.span = request.open("image", start, attributes=attributes)
        self._parents: list[Span] = []  # each pass's: a tile's span, else the image's
        self.untiled: PassTrace | None = None  # an untiled image's pass, once letterboxed
        self._open = True

    def decoded(self, start: float, end: float, upload: Upload) -> None:
        height, width = upload.decoded.image.shape[:2]
        attributes = {"yolor.decoded.width": width, "yolor.decoded.height": height}
        self.request.record("decode", start, end, parent=self.span, attributes=attributes)
        size = {"yolor.image.width": upload.decoded.width, "yolor.image.height": upload.decoded.height}
        self.span.set_attributes(size)

    def letterboxed(
        self, start: float, end: float, jobs: Sequence[Window | None], *, tiled: bool
    ) -> list[PassTrace]:
        """A letterbox of `jobs` (windows, None: the whole image), and the traces of the passes it
        made, for the batcher: a sliced image's each under a `tile` span opened now."""
        self.request.record("letterbox", start, end, parent=self.span, attributes={"yolor.passes": len(jobs)})
        made = []
        for job in jobs:
            if not tiled:
                parent = self.span
            else:
                window = list(job) if job is not None else []
                attributes: Attributes = {"yolor.tile.index": len(self._parents), "yolor.tile.window": window}
                parent = self.request.open("tile", start, parent=self.span, attributes=attributes)
            self._parents.append(parent)
            made.append(PassTrace(self.request, parent))
        if not tiled:
            self.untiled = made[0]
        return made

    def answered(
        self, outputs: Sequence[BatchOutput], merged: Postprocessed | None, *, tiles: int, detections: int
    ) -> None:
        """Close every span with the image's passes' outputs (and a sliced image's merge)."""
        ends = record_passes(self.request, self._parents, outputs)
        for parent, end in zip(self._parents, ends, strict=True):
            if parent is not self.span:
                self.request.close(parent, end)
        end = max(ends)
        if merged is not None:
            end = merged.began + merged.seconds
            self.request.record("merge", merged.began, end, parent=self.span)
        self.request.close(self.span, end, {"yolor.tiles": tiles, "yolor.detections": detections})
        self._open = False

    def failed(self, error: BaseException) -> None:
        """End the spans still open of an image whose request failed (or was given up)."""
        if not self._open:
            return
        now = time.monotonic()
        for span in [*(p for p in self._parents if p is not self.span), self.span]:
            if span.is_recording():
                self.request.close(span, now, error=type(error).__name__)
        self._open = False
