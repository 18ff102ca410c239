"""One detection request end to end: its files pre-processed in the decode pool
(`service.core.preprocess`), their passes through the shared batcher, each output post-processed in
the batch's worker thread (`service.core.postprocess`), a sliced image's passes merged.

A sliced image (`service.core.tiling`) becomes several passes, its windows and the whole image, that
go through the batcher with everyone else's images, a few batches at a time (`Submission`). A client
that disconnects, or a request past its deadline, gives up its queued images: the batcher drops them
before inference.
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
from service.core.batcher import BatchOutput, DynamicBatcher
from service.core.errors import ClientDisconnected, DeadlineExceeded, NoImages, TooManyImages
from service.core.images import header_size
from service.core.metrics import ModelMetrics
from service.core.options import DetectParams
from service.core.postprocess import Postprocessed, Postprocessor
from service.core.preprocess import ImageInput, Pass, Preprocessor, Upload
from service.core.request_spans import ImageSpans, record_passes, timed
from service.core.tiling import TileOptions, Window
from service.manifest import ModelManifest
from service.processing import Detections
from service.tracing import PassTrace, RequestTrace, exemplar, recording

Disconnected = Callable[[], Awaitable[None]]  # returns once the client has gone away
T = TypeVar("T")
Made = tuple[list[Pass], Sequence[PassTrace | None] | None]  # passes, and their traces when traced
WARMUP_ROWS = 1000  # output rows post-processed by the warm-up


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


class Submission:
    """What one request has handed the batcher: every future (cancelled at its end, so that the
    batcher skips what was not run), the permits that bound how many batches of a sliced image's
    windows are queued at once (`workers + 1`: other requests' images interleave with it, and its
    tensors are never all in memory), and `failed`, set by the request's first failure so that its
    other images stop queueing windows. `background`: queued behind interactive images (a stream's
    frames; `DynamicBatcher.submit`)."""

    def __init__(
        self,
        batcher: DynamicBatcher,
        finish: Callable[..., Postprocessed],
        deadline: float,
        *,
        background: bool = False,
    ) -> None:
        self._batcher, self._finish, self.deadline = batcher, finish, deadline
        self.background = background
        self.futures: list[asyncio.Future[BatchOutput]] = []
        self.failed = asyncio.Event()
        self._permits = asyncio.Semaphore(batcher.workers + 1)

    def submit(
        self, passes: Sequence[Pass], params: DetectParams, traces: Sequence[PassTrace | None] | None = None
    ) -> list[asyncio.Future[BatchOutput]]:
        """`passes` queued now (batched with whatever else is waiting); `traces`: theirs, when
        their request is traced."""
        if not passes:
            return []
        finish = [functools.partial(self._finish, lb=p.lb, offset=p.offset, params=params) for p in passes]
        batch = self._batcher.submit(
            [p.tensor for p in passes], self.deadline, finish, background=self.background, traces=traces
        )
        self.futures += batch
        return batch

    async def submit_bounded(
        self, make: Callable[[], Awaitable[Made]], params: DetectParams
    ) -> tuple[list[Pass], list[asyncio.Future[BatchOutput]]] | None:
        """One batch of a sliced image's windows, made by `make` (with their traces when traced)
        once a permit is free (the permit is held until the batch has run): the passes and their
        futures; None once the request has failed (nothing made)."""
        await self._permits.acquire()
        try:
            if self.failed.is_set():
                self._permits.release()
                return None
            passes, traces = await make()
            batch = self.submit(passes, params, traces)
        except BaseException:
            self._permits.release()
            raise
        asyncio.gather(*batch, return_exceptions=True).add_done_callback(functools.partial(self._ran, batch))
        return passes, batch

    def _ran(self, batch: list[asyncio.Future[BatchOutput]], _: asyncio.Future[Any]) -> None:
        """A batch of windows has run (or was given up): its permit is free again; a failed one
        stops the request's other windows being queued."""
        self._permits.release()
        if any(not f.cancelled() and f.exception() is not None for f in batch):
            self.failed.set()

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


class Detector:
    """Turns uploaded files into detections through the shared batcher."""

    def __init__(
        self,
        manifest: ModelManifest,
        backend: Backend,
        batcher: DynamicBatcher,
        pool: Executor,
        metrics: ModelMetrics,
        *,
        max_images: int,
        max_pixels: int,
        timeout_s: float,
        reduced_decode: bool = False,
        max_tiles: int = 1,
    ) -> None:
        self.manifest, self.backend, self.batcher = manifest, backend, batcher
        self.pool, self.metrics = pool, metrics
        self.max_images, self.max_tiles, self.timeout_s = max_images, max_tiles, timeout_s
        self.preprocessor = Preprocessor(
            manifest, max_pixels=max_pixels, reduced_decode=reduced_decode, max_tiles=max_tiles
        )
        # What the backend answers (the torch one: raw or top-K), which may not be the manifest's.
        self.postprocessor = Postprocessor(backend.head, metrics)

    async def warm_up(self, threads: int) -> None:
        """Decode and letterbox a synthetic image once in each of the pool's `threads` (none: 0, as
        on a reload, whose pool is warm and busy), and post-process a backend output once, off the
        metrics: the first calls in a thread pay for lazy initialisation (tens of ms), and a
        request should not."""
        side = max(1, min(32, int(self.preprocessor.max_pixels**0.5)))  # within YOLOR_MAX_IMAGE_PIXELS
        ok, encoded = cv2.imencode(".png", np.full((side, side, 3), 114, np.uint8))
        assert ok
        sample = self.preprocessor.whole(encoded.tobytes())

        def infer_and_postprocess() -> None:
            # Every row a candidate (conf 0), but at most WARMUP_ROWS of them: on a raw head at
            # 1280 px NMS over all ~100k rows would take seconds and delay readiness for nothing.
            output = self.backend.infer(sample.tensor[None])[0][:WARMUP_ROWS]
            self.postprocessor.detections(output, sample.lb, DetectParams(conf=0.0))

        await asyncio.to_thread(infer_and_postprocess)
        if threads < 1:
            return
        together = threading.Barrier(threads, timeout=5.0)

        def decode() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait()  # so that every thread takes one call
            self.preprocessor.whole(encoded.tobytes())

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, decode) for _ in range(threads)))

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
        deadline = started + self.timeout_s
        request = self._traced()
        traces = None if request is None else [PassTrace(request, request.span)] * len(tensors)
        futures = self.batcher.submit(list(tensors), deadline, None, traces=traces)

        async def outputs() -> list[BatchOutput]:
            try:
                return await asyncio.gather(*futures)
            finally:
                for future in futures:  # after a failure: the batcher skips abandoned images
                    future.cancel()

        ran = await self._race(outputs(), deadline, disconnected)
        self.metrics.detect_duration.observe(time.monotonic() - started, exemplar())
        if request is not None:
            record_passes(request, [request.span] * len(ran), ran)
        return ran

    def _traced(self) -> RequestTrace | None:
        """This task's request, when it is traced (sampled): the model's attributes on its span."""
        request = recording()
        if request is not None:
            request.span.set_attributes(self.batcher.trace_attributes)
        return request

    async def _run(
        self, files: Sequence[bytes], params: DetectParams, started: float, keep_images: bool, deadline: float
    ) -> DetectOutcome:
        """`detect`'s work (raced against the client going away and the deadline, cancelled then):
        prepare and submit every file, wait for the outputs, merge sliced images' passes."""
        t0 = time.monotonic()
        submission = Submission(self.batcher, self.postprocessor.finish, deadline)
        request = self._traced()
        spans = [] if request is None else [ImageSpans(request, i, len(f), t0) for i, f in enumerate(files)]

        async def prepare(index: int) -> tuple[ImageInput, list[asyncio.Future[BatchOutput]] | None]:
            try:
                image_spans = spans[index] if spans else None
                return await self._prepare(files[index], keep_images, params, submission, image_spans)
            except BaseException:
                submission.failed.set()
                raise

        try:
            try:
                with self.batcher.incoming(len(files), admit=True):
                    preparing = (prepare(i) for i in range(len(files)))
                    done = await asyncio.gather(*preparing, return_exceptions=True)
                images = [result for result in done if isinstance(result, tuple)]
                if len(images) < len(done):  # the first bad image, in request order, answers for it
                    raise next(result for result in done if isinstance(result, BaseException))
                t1 = time.monotonic()
                untiled = [(i, item.passes[0]) for i, (item, futures) in enumerate(images) if futures is None]
                traces = [spans[i].untiled for i, _ in untiled] if spans else None
                together = iter(submission.submit([p for _, p in untiled], params, traces))  # one batch
                per_image = [futures if futures is not None else [next(together)] for _, futures in images]
                outputs = await asyncio.gather(*(f for futures in per_image for f in futures))
            finally:
                submission.cancel()  # after a failure, a disconnect or the deadline: the batcher skips them
            images_out, merged = await self._merge_passes([item for item, _ in images], outputs, params)
        except BaseException as e:
            for image_spans in spans:
                image_spans.failed(e)
            raise
        done_at = time.monotonic()
        self.metrics.detect_duration.observe(done_at - started, exemplar())
        self.metrics.images.inc(len(images_out))
        self.metrics.detections.inc(sum(len(i.detections) for i in images_out))
        if request is not None:
            self._trace_answers(request, spans, per_image, outputs, merged, images_out)
        timing = {
            "preprocess": t1 - t0,
            "queue": max(o.queue_s for o in outputs),
            "inference": max(o.inference_s for o in outputs),
            "postprocess": sum(o.output.seconds for o in outputs) + sum(m.seconds for m in merged if m),
            "total": done_at - started,
        }
        return DetectOutcome(images_out, {k: round(v * 1000, 3) for k, v in timing.items()}, outputs)

    @staticmethod
    def _trace_answers(
        request: RequestTrace,
        spans: list[ImageSpans],
        per_image: list[list[asyncio.Future[BatchOutput]]],
        outputs: list[BatchOutput],
        merged: list[Postprocessed | None],
        images: list[ImageDetections],
    ) -> None:
        at = 0
        for image_spans, futures, merge, image in zip(spans, per_image, merged, images, strict=True):
            passes, at = outputs[at : at + len(futures)], at + len(futures)
            image_spans.answered(passes, merge, tiles=image.tiles, detections=len(image.detections))
        detections = sum(len(i.detections) for i in images)
        request.span.set_attributes({"yolor.images": len(images), "yolor.detections": detections})

    async def _prepare(
        self,
        data: bytes,
        keep_image: bool,
        params: DetectParams,
        submission: Submission,
        spans: ImageSpans | None = None,
    ) -> tuple[ImageInput, list[asyncio.Future[BatchOutput]] | None]:
        """One file prepared in the pool. Untiled: its pass (submitted later, with the request's
        other untiled images). Sliced: its passes submitted one batch at a time as they are cut,
        bounded by the submission's permits, until the request fails. `spans`: the image's, when
        its request is traced (each step then also timed in the pool)."""
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        if params.tile.mode == "off":
            if spans is None:
                whole = functools.partial(self.preprocessor.whole, data, keep_image=keep_image)
                image = await loop.run_in_executor(self.pool, whole)
            else:  # decode and letterbox timed apart
                traced = functools.partial(self._whole_timed, data, keep_image)
                image, upload, (opened, decoded, end) = await loop.run_in_executor(self.pool, traced)
                spans.decoded(opened, decoded, upload)
                spans.letterboxed(decoded, end, [None], tiled=False)
            self.metrics.preprocess.observe(time.monotonic() - start)
            return image, None
        opening = functools.partial(self.preprocessor.open, data, keep_image=keep_image, tile=params.tile)
        upload, opened, decoded = await loop.run_in_executor(self.pool, timed, opening)
        if spans is not None:
            spans.decoded(opened, decoded, upload)
        jobs: list[Window | None] = [*upload.windows, None]
        passes: list[Pass] = []
        futures: list[asyncio.Future[BatchOutput]] = []
        size = self.batcher.max_batch_size
        for chunk in (jobs[at : at + size] for at in range(0, len(jobs), size)):
            cut = functools.partial(self._cut, upload, chunk, spans)
            submitted = await submission.submit_bounded(cut, params)
            if submitted is None:
                break
            futures += submitted[1]
            passes += [p.without_tensor() for p in submitted[0]]  # the queue holds the tensors until run
        self.metrics.preprocess.observe(time.monotonic() - start)
        return ImageInput.of(upload, passes, keep_image), futures

    def _whole_timed(
        self, data: bytes, keep_image: bool
    ) -> tuple[ImageInput, Upload, tuple[float, float, float]]:
        """Pool thread: `Preprocessor.whole` of a traced request's image, its upload, and the times
        its decode started, its letterbox started and ended."""
        upload, start, decoded = timed(functools.partial(self.preprocessor.open, data, keep_image=keep_image))
        passes, _, end = timed(functools.partial(self.preprocessor.passes, upload, [None]))
        return ImageInput.of(upload, passes, keep_image), upload, (start, decoded, end)

    async def _cut(self, upload: Upload, jobs: list[Window | None], spans: ImageSpans | None) -> Made:
        """The passes of a sliced image's `jobs`, letterboxed in the pool (with their traces when
        the request is traced)."""
        loop = asyncio.get_running_loop()
        if spans is None:
            return await loop.run_in_executor(self.pool, self.preprocessor.passes, upload, jobs), None
        letterbox = functools.partial(timed, functools.partial(self.preprocessor.passes, upload, jobs))
        passes, start, end = await loop.run_in_executor(self.pool, letterbox)
        return passes, spans.letterboxed(start, end, jobs, tiled=True)

    async def _merge_passes(
        self, images: list[ImageInput], outputs: list[BatchOutput], params: DetectParams
    ) -> tuple[list[ImageDetections], list[Postprocessed | None]]:
        """Each image's detections (a sliced image's passes merged, in the pool) and each sliced
        image's merge."""
        loop = asyncio.get_running_loop()

        async def detections(item: ImageInput, parts: list[Detections]) -> Postprocessed:
            if not item.tiles:
                return Postprocessed(parts[0], 0.0)
            self.metrics.tiles.observe(item.tiles)
            return await loop.run_in_executor(self.pool, self.postprocessor.merge, parts, params)

        groups, at = [], 0
        for item in images:
            groups.append([o.output.detections for o in outputs[at : at + len(item.passes)]])
            at += len(item.passes)
        merged = await asyncio.gather(*(detections(i, g) for i, g in zip(images, groups, strict=True)))
        results = [
            ImageDetections(item.width, item.height, result.detections, item.image, item.tiles)
            for item, result in zip(images, merged, strict=True)
        ]
        return results, [m if item.tiles else None for item, m in zip(images, merged, strict=True)]

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
                self.metrics.client_disconnects.inc()
                raise ClientDisconnected("the client disconnected before its images were run")
            raise DeadlineExceeded(f"no result within the {self.timeout_s:g} s request deadline")
        finally:
            if gone is not None:
                gone.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # its queued images given up first
