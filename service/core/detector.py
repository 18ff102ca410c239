"""One detection request end to end: decode + letterbox (thread pool), batch inference, post-processing.

A tiled image (`service.core.tiling`) becomes several passes, its windows and the whole image, that go
through the batcher with everyone else's images; their detections are merged back into one answer.

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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import numpy as np

from service.backends.base import Backend
from service.core.batcher import BatchOutput, DynamicBatcher, Finish
from service.core.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InvalidParameter,
    NoImages,
    TooManyImages,
)
from service.core.images import Decoded, decode, header_size
from service.core.metrics import Metrics
from service.core.options import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET, NO_TILING, DetectOptions
from service.core.results import (
    Detection,
    DetectResponse,
    ImageResult,
    ModelSummary,
    Timing,
)
from service.core.tiling import MATCH_IOS, TileOptions, Window
from service.manifest import ModelManifest
from service.processing import (
    Detections,
    Letterbox,
    head_layout,
    letterbox_tensor,
    merge_detections,
    scale_boxes,
    select_detections,
)

Disconnected = Callable[[], Awaitable[None]]  # returns once the client has gone away
T = TypeVar("T")
WARMUP_ROWS = 1000  # output rows post-processed by the warm-up


@dataclass(frozen=True)
class DetectParams:
    """Per-request post-processing parameters; `classes` are resolved ids (None: all)."""

    conf: float = DEFAULT_CONF
    iou: float = DEFAULT_IOU
    max_det: int = DEFAULT_MAX_DET
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    tile: TileOptions = NO_TILING


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
class Pass:
    """One model input of an image: the whole image, or one window of a tiled image."""

    tensor: np.ndarray  # (3, S, S) float32; empty once handed to the batcher (`without_tensor`)
    lb: Letterbox  # the window's (or image's) pixels <-> input pixels
    offset: tuple[int, int]  # the window's top-left (x, y) in the image

    def without_tensor(self) -> Pass:
        """This pass, its tensor dropped: a tiled image's submitted windows are not held twice."""
        return Pass(_NO_TENSOR, self.lb, self.offset)


_NO_TENSOR = np.zeros((0,), np.float32)


@dataclass(frozen=True)
class Prepared:
    passes: tuple[Pass, ...]  # the windows of a tiled image, then always the whole image
    height: int
    width: int
    image: np.ndarray | None  # RGB original, kept only when it will be drawn on

    @property
    def tiles(self) -> int:
        return len(self.passes) - 1

    @property
    def tensor(self) -> np.ndarray:
        """The whole image's input tensor."""
        return self.passes[-1].tensor

    @property
    def lb(self) -> Letterbox:
        return self.passes[-1].lb


@dataclass(frozen=True)
class Opened:
    """An uploaded file decoded, with the windows it is to be sliced into (none: untiled)."""

    decoded: Decoded
    windows: list[Window]


def open_image(
    data: bytes,
    manifest: ModelManifest,
    *,
    max_pixels: int,
    keep_image: bool = False,
    reduced_decode: bool = False,
    tile: TileOptions = NO_TILING,
    max_tiles: int = 1,
) -> Opened:
    """Decode one uploaded file and plan its windows (`TileOptions.windows`, at most `max_tiles`).

    `reduced_decode`: a large JPEG is decoded at reduced scale (`service.core.images.decode`), unless
    the full image is kept (to draw on) or tiled; the letterbox still maps boxes to the full image."""
    size = manifest.input_size
    fit = size if reduced_decode and not keep_image and tile.mode == "off" else None
    decoded = decode(data, max_pixels, fit=fit)
    return Opened(decoded, tile.windows(decoded.height, decoded.width, input_size=size, max_tiles=max_tiles))


def make_passes(opened: Opened, jobs: Sequence[Window | None], manifest: ModelManifest) -> list[Pass]:
    """The input tensors of `jobs`: each a window of the image, or None for the whole image."""
    passes, image, pad = [], opened.decoded.image, manifest.input.letterbox_pad
    height, width = opened.decoded.height, opened.decoded.width  # the full image's (maybe not decoded's)
    for window in jobs:
        x1, y1, x2, y2 = window or (0, 0, image.shape[1], image.shape[0])
        tensor, lb = letterbox_tensor(image[y1:y2, x1:x2], manifest.input_size, color=pad)
        if window is None and lb.source_hw != (height, width):  # decoded at reduced scale
            lb = lb.from_source(height, width)
        passes.append(Pass(tensor, lb, (x1, y1)))
    return passes


def prepared(opened: Opened, passes: Sequence[Pass], keep_image: bool) -> Prepared:
    image = opened.decoded.image if keep_image else None
    return Prepared(tuple(passes), opened.decoded.height, opened.decoded.width, image)


def preprocess(
    data: bytes,
    manifest: ModelManifest,
    *,
    max_pixels: int,
    keep_image: bool = False,
    reduced_decode: bool = False,
) -> Prepared:
    """Decode + letterbox + input tensor of one uploaded file, as every untiled request does it."""
    opened = open_image(
        data, manifest, max_pixels=max_pixels, keep_image=keep_image, reduced_decode=reduced_decode
    )
    return prepared(opened, make_passes(opened, [None], manifest), keep_image)


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
    tiles: int = 0  # windows it was run as (0: untiled)


@dataclass(frozen=True)
class DetectOutcome:
    images: list[ImageDetections]
    timing_ms: dict[str, float]
    batches: list[BatchOutput]  # each pass's (its `output` is a `Postprocessed`)


def _batch_done(
    _: asyncio.Future[Any],
    *,
    batch: list[asyncio.Future[BatchOutput]],
    permits: asyncio.Semaphore,
    failed: asyncio.Event,
) -> None:
    """A tiled image's batch of windows has run (or was given up): its permit is free again; a
    failed one stops the request's other windows being queued."""
    permits.release()
    if any(not f.cancelled() and f.exception() is not None for f in batch):
        failed.set()


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
        max_tiles: int = 1,
    ) -> None:
        self.manifest, self.backend, self.batcher = manifest, backend, batcher
        self._head = head_layout(backend.head)  # what the backend answers (the torch one: raw or top-K)
        self._pool, self._metrics = pool, metrics
        self.max_images, self.max_pixels, self.timeout_s = max_images, max_pixels, timeout_s
        self.reduced_decode, self.max_tiles = reduced_decode, max_tiles

    async def warm_up(self, threads: int) -> None:
        """Decode and letterbox a synthetic image once in each of the pool's `threads` (none: 0, as
        on a reload, whose pool is warm and busy), and post-process a backend output once, off the
        metrics: the first calls in a thread pay for lazy initialisation (tens of ms), and a
        request should not."""
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
        if threads < 1:
            return
        together = threading.Barrier(threads, timeout=5.0)

        def decode() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait()  # so that every thread takes one call
            self._preprocess(encoded.tobytes(), keep_image=False)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, decode) for _ in range(threads)))

    def params(self, options: DetectOptions) -> DetectParams:
        """`options` for this model: class names resolved to ids (InvalidParameter if unknown)."""
        return DetectParams(
            conf=options.conf,
            iou=options.iou,
            max_det=options.max_det,
            classes=resolve_classes(options.classes, self.manifest.class_names),
            agnostic=options.agnostic,
            tile=options.tile,
        )

    def _check_count(self, images: int) -> None:
        if not images:
            raise NoImages("send at least one image")
        if images > self.max_images:
            raise TooManyImages(f"{images} images; at most {self.max_images} per request")

    def _check_tiles(self, files: Sequence[bytes], tile: TileOptions) -> None:
        """Before decoding, from the files' headers: an explicit `tile_size` that cuts an image into
        more windows than the per-image limit is refused now (TooManyTiles), not after decoding."""
        size = self.manifest.input_size
        for data in files:
            if (width_height := header_size(data)) is not None:
                width, height = width_height
                tile.windows(height, width, input_size=size, max_tiles=self.max_tiles)

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
        self._check_count(len(files))
        if params.tile.mode != "off":
            self._check_tiles(files, params.tile)
        deadline = started + self.timeout_s
        return await self._race(
            self._run(files, params, started, keep_images, deadline), deadline, disconnected
        )

    async def infer_tensors(
        self, tensors: Sequence[np.ndarray], *, started: float, disconnected: Disconnected | None = None
    ) -> list[BatchOutput]:
        """The backend's output row (`output`) for each input tensor (C, H, W), through the same
        batcher, queue limit and deadline as `detect` (the KServe v2 tensor model)."""
        self._check_count(len(tensors))
        return await self._infer(list(tensors), None, started + self.timeout_s, disconnected)

    async def _run(
        self, files: Sequence[bytes], params: DetectParams, started: float, keep_images: bool, deadline: float
    ) -> DetectOutcome:
        """`detect`'s work (raced against the client going away and the deadline, cancelled then):
        prepare and submit every file, wait for the outputs, merge tiled images' passes."""
        t0 = time.monotonic()
        failed = asyncio.Event()  # set by the first file that fails: the others stop queueing windows
        permits = asyncio.Semaphore(self.batcher.workers + 1)  # window batches of this request queued
        submitted: list[asyncio.Future[BatchOutput]] = []

        async def prepare(data: bytes) -> tuple[Prepared, list[asyncio.Future[BatchOutput]] | None]:
            try:
                return await self._prepare_image(
                    data, keep_images, params, deadline, failed, permits, submitted
                )
            except BaseException:
                failed.set()
                raise

        try:
            with self.batcher.incoming(len(files)):
                done = await asyncio.gather(*(prepare(f) for f in files), return_exceptions=True)
            images = [result for result in done if isinstance(result, tuple)]
            if len(images) < len(done):  # the first bad image, in request order, answers for the request
                raise next(result for result in done if isinstance(result, BaseException))
            t1 = time.monotonic()
            untiled = [item.passes[0] for item, futures in images if futures is None]
            together = self._submit(untiled, params, deadline)  # submitted at once: batched together
            submitted += together
            remaining = iter(together)
            per_image = [futures if futures is not None else [next(remaining)] for _, futures in images]
            outputs = await asyncio.gather(*(f for futures in per_image for f in futures))
        finally:
            for future in submitted:  # after a failure, a disconnect or the deadline: the batcher skips them
                future.cancel()
        images_out, merge_s = await self._merge_passes([item for item, _ in images], outputs, params)
        done_at = time.monotonic()
        self._metrics.images.inc(len(images_out))
        self._metrics.detections.inc(sum(len(i.detections) for i in images_out))
        timing = {
            "preprocess": t1 - t0,
            "queue": max(o.queue_s for o in outputs),
            "inference": max(o.inference_s for o in outputs),
            "postprocess": sum(o.output.seconds for o in outputs) + merge_s,
            "total": done_at - started,
        }
        return DetectOutcome(images_out, {k: round(v * 1000, 3) for k, v in timing.items()}, outputs)

    async def _prepare_image(
        self,
        data: bytes,
        keep_image: bool,
        params: DetectParams,
        deadline: float,
        failed: asyncio.Event,
        permits: asyncio.Semaphore,
        submitted: list[asyncio.Future[BatchOutput]],
    ) -> tuple[Prepared, list[asyncio.Future[BatchOutput]] | None]:
        """One file prepared in the pool. Untiled: its pass (submitted later with the request's other
        untiled images). Tiled: its passes submitted one batch at a time as they are cut (into
        `submitted`), each batch holding one of the request's `permits` until it has run: a sliced
        request keeps a few batches queued, not all of its windows, so other requests' images
        interleave with it and its tensors are not all in memory at once. Stops when another file
        of the request (or one of its batches) fails: `failed`."""
        loop = asyncio.get_running_loop()
        if params.tile.mode == "off":
            return await loop.run_in_executor(self._pool, self._prepare, data, keep_image), None
        start = time.monotonic()
        opened = await loop.run_in_executor(self._pool, self._open, data, keep_image, params.tile)
        jobs: list[Window | None] = [*opened.windows, None]
        passes: list[Pass] = []
        futures: list[asyncio.Future[BatchOutput]] = []
        for at in range(0, len(jobs), self.batcher.max_batch_size):
            await permits.acquire()
            try:
                if failed.is_set():
                    permits.release()
                    break
                chunk = jobs[at : at + self.batcher.max_batch_size]
                made = await loop.run_in_executor(self._pool, make_passes, opened, chunk, self.manifest)
                batch = self._submit(made, params, deadline)
            except BaseException:
                permits.release()
                raise
            submitted += batch
            futures += batch
            passes += [p.without_tensor() for p in made]  # the queue holds the tensors until run
            asyncio.gather(*batch, return_exceptions=True).add_done_callback(
                functools.partial(_batch_done, batch=batch, permits=permits, failed=failed)
            )
        self._metrics.preprocess.observe(time.monotonic() - start)
        return prepared(opened, passes, keep_image), futures

    def _submit(
        self, passes: Sequence[Pass], params: DetectParams, deadline: float
    ) -> list[asyncio.Future[BatchOutput]]:
        if not passes:
            return []
        finish = [functools.partial(self._finish, lb=p.lb, offset=p.offset, params=params) for p in passes]
        return self.batcher.submit([p.tensor for p in passes], deadline, finish)

    async def _merge_passes(
        self, prepared: list[Prepared], outputs: list[BatchOutput], params: DetectParams
    ) -> tuple[list[ImageDetections], float]:
        """Each image's detections (a tiled image's passes merged, in the pool) and the merge time."""
        loop = asyncio.get_running_loop()

        async def detections(item: Prepared, parts: list[Detections]) -> Postprocessed:
            if not item.tiles:
                return Postprocessed(parts[0], 0.0)
            self._metrics.tiles.observe(item.tiles)
            return await loop.run_in_executor(self._pool, self._merge, parts, params)

        groups, at = [], 0
        for item in prepared:
            groups.append([o.output.detections for o in outputs[at : at + len(item.passes)]])
            at += len(item.passes)
        merged = await asyncio.gather(*(detections(i, g) for i, g in zip(prepared, groups, strict=True)))
        images = [
            ImageDetections(item.width, item.height, result.detections, item.image, item.tiles)
            for item, result in zip(prepared, merged, strict=True)
        ]
        return images, sum(m.seconds for m in merged)

    @staticmethod
    def _merge(parts: list[Detections], params: DetectParams) -> Postprocessed:
        """Pool thread: one tiled image's detections from all its passes, merged, best `max_det`."""
        start = time.monotonic()
        pooled = Detections(
            np.concatenate([d.boxes for d in parts]),
            np.concatenate([d.scores for d in parts]),
            np.concatenate([d.class_ids for d in parts]),
        )
        mode, agnostic = params.tile.merge, params.agnostic
        merged = merge_detections(pooled, mode=mode, threshold=MATCH_IOS, agnostic=agnostic)
        best = slice(0, params.max_det)
        detections = Detections(merged.boxes[best], merged.scores[best], merged.class_ids[best])
        return Postprocessed(detections, time.monotonic() - start)

    def _prepare(self, data: bytes, keep_image: bool) -> Prepared:
        start = time.monotonic()
        result = self._preprocess(data, keep_image)
        self._metrics.preprocess.observe(time.monotonic() - start)
        return result

    def _open(self, data: bytes, keep_image: bool, tile: TileOptions) -> Opened:
        return open_image(
            data,
            self.manifest,
            max_pixels=self.max_pixels,
            keep_image=keep_image,
            reduced_decode=self.reduced_decode,
            tile=tile,
            max_tiles=self.max_tiles,
        )

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

        async def outputs() -> list[BatchOutput]:
            try:
                return await asyncio.gather(*futures)
            finally:
                for future in futures:  # after a failure: the batcher skips abandoned images
                    future.cancel()

        return await self._race(outputs(), deadline, disconnected)

    async def _race(
        self, work: Coroutine[Any, Any, T], deadline: float, disconnected: Disconnected | None
    ) -> T:
        """`work`'s result, unless the client goes away (ClientDisconnected) or the deadline passes
        (DeadlineExceeded) first: `work` is then cancelled, which gives up its queued images."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            waiting: set[asyncio.Future[Any]] = {task} if gone is None else {task, gone}
            remaining = max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            if gone is not None and gone in done:
                self._metrics.client_disconnects.inc()
                raise ClientDisconnected("the client disconnected before its images were run")
            raise DeadlineExceeded(f"no result within the {self.timeout_s:g} s request deadline")
        finally:
            if gone is not None:
                gone.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # its queued images given up first

    def _finish(
        self, output: np.ndarray, *, lb: Letterbox, params: DetectParams, offset: tuple[int, int] = (0, 0)
    ) -> Postprocessed:
        """Batch worker thread: `_postprocess`, timed; boxes moved by a window's `offset`."""
        start = time.monotonic()
        detections = self._postprocess(output, lb, params)
        if offset != (0, 0):
            shift = np.asarray(offset * 2, dtype=np.float32)
            detections = Detections(detections.boxes + shift, detections.scores, detections.class_ids)
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
            results.append(
                ImageResult(width=image.width, height=image.height, detections=detections, tiles=image.tiles)
            )
        model = ModelSummary(
            arch=self.manifest.arch,
            backend=self.backend.name,
            precision=self.backend.precision,
            input_size=self.manifest.input_size,
        )
        return DetectResponse(model=model, results=results, timing_ms=Timing(**outcome.timing_ms))
