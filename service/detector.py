"""One detection request end to end: decode + letterbox (thread pool), batch inference, post-processing.

Decoding and letterboxing run in a thread pool, so they overlap with the batch the backend is
running; post-processing is vectorised numpy (`service.processing`) that the batch's worker thread
runs on each output row right after the batch (no extra thread hop). Boxes come back in
original-image pixels through the exact inverse of the letterbox. A client that disconnects while
its images wait gives them up: the batcher drops them before inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from service.backends.base import Backend
from service.batcher import BatchOutput, DynamicBatcher, Finish
from service.errors import ClientDisconnected, DeadlineExceeded, InvalidParameter, NoImages, TooManyImages
from service.images import decode
from service.manifest import ModelManifest
from service.metrics import Metrics
from service.processing import (
    Detections,
    Letterbox,
    head_layout,
    letterbox,
    scale_boxes,
    select_detections,
    to_input_tensor,
)
from service.schemas import (
    DEFAULT_CONF,
    DEFAULT_IOU,
    DEFAULT_MAX_DET,
    Detection,
    DetectResponse,
    ImageResult,
    ModelSummary,
    Timing,
)

Disconnected = Callable[[], Awaitable[None]]  # returns once the client has gone away
WARMUP_ROWS = 1000  # output rows post-processed by the warm-up


@dataclass(frozen=True)
class DetectParams:
    """Per-request post-processing parameters; `classes` are resolved ids (None: all)."""

    conf: float = DEFAULT_CONF
    iou: float = DEFAULT_IOU
    max_det: int = DEFAULT_MAX_DET
    classes: tuple[int, ...] | None = None
    agnostic: bool = False


def resolve_classes(values: Sequence[int | str] | None, class_names: Sequence[str]) -> tuple[int, ...] | None:
    """Class ids from ids and/or names (a string may hold several, comma-separated: "person,2").

    Raises InvalidParameter for an unknown name or an id outside [0, nc).
    """
    if not values:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    ids: list[int] = []
    for value in values:
        parts = [value] if isinstance(value, int) else [p.strip() for p in value.split(",") if p.strip()]
        for part in parts:
            if isinstance(part, str) and part in index:
                ids.append(index[part])
            elif isinstance(part, int) or part.lstrip("-").isdigit():
                class_id = int(part)
                if not 0 <= class_id < len(class_names):
                    raise InvalidParameter(f"class id {class_id} is outside [0, {len(class_names)})")
                ids.append(class_id)
            else:
                raise InvalidParameter(f"unknown class {part!r}")
    return tuple(sorted(set(ids))) or None


@dataclass(frozen=True)
class Prepared:
    tensor: np.ndarray  # (3, S, S) float32
    lb: Letterbox
    image: np.ndarray | None  # RGB original, kept only when it will be drawn on


def preprocess(
    data: bytes,
    manifest: ModelManifest,
    *,
    max_pixels: int,
    keep_image: bool = False,
    reduced_decode: bool = False,
) -> Prepared:
    """Decode + letterbox + input tensor of one uploaded file, as every request does it.

    `reduced_decode`: a large JPEG is decoded at reduced scale (`service.images.decode`), unless
    the full image is kept (to draw on); the letterbox still maps boxes to the full image."""
    fit = manifest.input_size if reduced_decode and not keep_image else None
    decoded = decode(data, max_pixels, fit=fit)
    boxed, lb = letterbox(decoded.image, manifest.input_size, color=manifest.input.letterbox_pad)
    if lb.source_hw != (decoded.height, decoded.width):
        lb = lb.from_source(decoded.height, decoded.width)
    return Prepared(to_input_tensor([boxed])[0], lb, decoded.image if keep_image else None)


@dataclass(frozen=True)
class Postprocessed:
    detections: Detections  # original-image pixels
    seconds: float


@dataclass(frozen=True)
class ImageDetections:
    width: int
    height: int
    detections: Detections  # original-image pixels
    image: np.ndarray | None


@dataclass(frozen=True)
class DetectOutcome:
    images: list[ImageDetections]
    timing_ms: dict[str, float]
    batches: list[BatchOutput]  # each image's (its `output` is a `Postprocessed`)


class Detector:
    """Turns uploaded files into detections through the shared batcher."""

    def __init__(
        self,
        manifest: ModelManifest,
        backend: Backend,
        batcher: DynamicBatcher,
        pool: Executor,
        metrics: Metrics,
        *,
        max_images: int,
        max_pixels: int,
        timeout_s: float,
        reduced_decode: bool = False,
    ) -> None:
        self.manifest, self.backend, self.batcher = manifest, backend, batcher
        self._head = head_layout(backend.head)  # the torch backend answers raw rows for any manifest
        self._pool, self._metrics = pool, metrics
        self.max_images, self.max_pixels, self.timeout_s = max_images, max_pixels, timeout_s
        self.reduced_decode = reduced_decode
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request is in `detect` (True), or `timeout_s` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            return False
        return True

    async def warm_up(self, threads: int) -> None:
        """Decode and letterbox a synthetic image once in each of the pool's `threads`, and
        post-process a backend output once, off the metrics: the first calls in a thread pay for
        lazy initialisation (tens of ms), and a request should not."""
        side = max(1, min(32, int(self.max_pixels**0.5)))  # within YOLOR_MAX_IMAGE_PIXELS
        ok, encoded = cv2.imencode(".png", np.full((side, side, 3), 114, np.uint8))
        assert ok
        sample = self._preprocess(encoded.tobytes(), keep_image=False)

        def infer_and_postprocess() -> None:
            # Every row a candidate (conf 0), but at most WARMUP_ROWS of them: on a raw head at
            # 1280 px NMS over all ~100k rows would take seconds and delay readiness for nothing.
            output = self.backend.infer(sample.tensor[None])[0][:WARMUP_ROWS]
            self._postprocess(output, sample.lb, DetectParams(conf=0.0))

        await asyncio.to_thread(infer_and_postprocess)
        together = threading.Barrier(threads, timeout=5.0)

        def decode() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait()  # so that every thread takes one call
            self._preprocess(encoded.tobytes(), keep_image=False)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, decode) for _ in range(threads)))

    def params(self, *, classes: Sequence[int | str] | None = None, **values: Any) -> DetectParams:
        return DetectParams(classes=resolve_classes(classes, self.manifest.class_names), **values)

    async def detect(
        self,
        files: Sequence[bytes],
        params: DetectParams,
        *,
        started: float,
        keep_images: bool = False,
        disconnected: Disconnected | None = None,
    ) -> DetectOutcome:
        """Detections for each file, in order. `started` is the request's time.monotonic() start.

        `disconnected()` returns when the client goes away; its queued images are then dropped.
        Raises NoImages, TooManyImages, InvalidImage, TooManyPixels, Overloaded, ShuttingDown,
        DeadlineExceeded, ClientDisconnected and InferenceFailed (all ServiceError).
        """
        with self._in_flight():
            return await self._detect(files, params, started, keep_images, disconnected)

    async def infer_tensors(
        self, tensors: Sequence[np.ndarray], *, started: float, disconnected: Disconnected | None = None
    ) -> list[BatchOutput]:
        """The backend's output row (`output`) for each input tensor (C, H, W), through the same
        batcher, queue limit and deadline as `detect` (the KServe v2 tensor model)."""
        with self._in_flight():
            if not tensors:
                raise NoImages("send at least one image")
            if len(tensors) > self.max_images:
                raise TooManyImages(f"{len(tensors)} images; at most {self.max_images} per request")
            return await self._infer(list(tensors), None, started + self.timeout_s, disconnected)

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Counts requests for `drain`."""
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _detect(
        self,
        files: Sequence[bytes],
        params: DetectParams,
        started: float,
        keep_images: bool,
        disconnected: Disconnected | None,
    ) -> DetectOutcome:
        if not files:
            raise NoImages("send at least one image")
        if len(files) > self.max_images:
            raise TooManyImages(f"{len(files)} images; at most {self.max_images} per request")
        deadline = started + self.timeout_s
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        with self.batcher.incoming(len(files)):
            done = await asyncio.gather(
                *(loop.run_in_executor(self._pool, self._prepare, f, keep_images) for f in files),
                return_exceptions=True,
            )
        prepared = [result for result in done if isinstance(result, Prepared)]
        if len(prepared) < len(done):  # the first bad image, in request order, answers for the request
            raise next(result for result in done if isinstance(result, BaseException))
        t1 = time.monotonic()
        finish = [functools.partial(self._finish, lb=item.lb, params=params) for item in prepared]
        outputs = await self._infer([item.tensor for item in prepared], finish, deadline, disconnected)
        done_at = time.monotonic()
        images = []
        for item, out in zip(prepared, outputs, strict=True):
            height, width = item.lb.source_hw
            images.append(ImageDetections(width, height, out.output.detections, item.image))
        self._metrics.images.inc(len(images))
        self._metrics.detections.inc(sum(len(i.detections) for i in images))
        timing = {
            "preprocess": t1 - t0,
            "queue": max(o.queue_s for o in outputs),
            "inference": max(o.inference_s for o in outputs),
            "postprocess": sum(o.output.seconds for o in outputs),
            "total": done_at - started,
        }
        return DetectOutcome(images, {k: round(v * 1000, 3) for k, v in timing.items()}, outputs)

    def _prepare(self, data: bytes, keep_image: bool) -> Prepared:
        start = time.monotonic()
        prepared = self._preprocess(data, keep_image)
        self._metrics.preprocess.observe(time.monotonic() - start)
        return prepared

    def _preprocess(self, data: bytes, keep_image: bool) -> Prepared:
        """`preprocess` (unmeasured; `_prepare` times it)."""
        return preprocess(
            data,
            self.manifest,
            max_pixels=self.max_pixels,
            keep_image=keep_image,
            reduced_decode=self.reduced_decode,
        )

    async def _infer(
        self,
        tensors: list[np.ndarray],
        finish: Sequence[Finish] | None,
        deadline: float,
        disconnected: Disconnected | None,
    ) -> list[BatchOutput]:
        """Batch outputs: `finish(row)` of each, or the row itself without `finish`."""
        futures = self.batcher.submit(tensors, deadline, finish)
        results = asyncio.gather(*futures)
        gone = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            waiting: set[asyncio.Future[Any]] = {results} if gone is None else {results, gone}
            remaining = max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if results in done:
                return results.result()
            if gone is not None and gone in done:
                self._metrics.client_disconnects.inc()
                raise ClientDisconnected("the client disconnected before its images were run")
            raise DeadlineExceeded(f"no result within the {self.timeout_s:g} s request deadline")
        finally:
            for future in futures:  # after a failure: the batcher skips abandoned images
                future.cancel()
            if gone is not None:
                gone.cancel()
            if results.done() and not results.cancelled():
                results.exception()  # retrieved: a failure is reported once, by the result above

    def _finish(self, output: np.ndarray, *, lb: Letterbox, params: DetectParams) -> Postprocessed:
        """Batch worker thread: `_postprocess`, timed."""
        start = time.monotonic()
        detections = self._postprocess(output, lb, params)
        seconds = time.monotonic() - start
        self._metrics.postprocess.observe(seconds)
        return Postprocessed(detections, seconds)

    def _postprocess(self, output: np.ndarray, lb: Letterbox, params: DetectParams) -> Detections:
        """One image's backend output -> thresholded, NMS'd detections in original pixels."""
        boxes, scores, class_ids = self._head.candidates(output, params.conf)
        kept = select_detections(
            boxes,
            scores,
            class_ids,
            conf=params.conf,
            iou=params.iou,
            max_det=params.max_det,
            classes=params.classes,
            agnostic=params.agnostic,
        )
        return Detections(scale_boxes(kept.boxes, lb), kept.scores, kept.class_ids)

    def to_response(self, outcome: DetectOutcome) -> DetectResponse:
        """The response: boxes rounded to 0.01 px, scores to 1e-5."""
        names = self.manifest.class_names
        results = []
        for image in outcome.images:
            det = image.detections
            boxes = np.round(det.boxes.astype(np.float64), 2).tolist()
            scores = np.round(det.scores.astype(np.float64), 5).tolist()
            ids = det.class_ids.tolist()
            detections = [
                Detection(
                    box=tuple(b), score=s, class_id=c, class_name=names[c] if 0 <= c < len(names) else str(c)
                )
                for b, s, c in zip(boxes, scores, ids, strict=True)
            ]
            results.append(ImageResult(width=image.width, height=image.height, detections=detections))
        model = ModelSummary(
            arch=self.manifest.arch,
            backend=self.backend.name,
            precision=self.backend.precision,
            input_size=self.manifest.input_size,
        )
        return DetectResponse(model=model, results=results, timing_ms=Timing(**outcome.timing_ms))
