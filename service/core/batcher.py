"""Dynamic batching: images from concurrent requests grouped into one backend call.

After Ray Serve's `batching.py`: a bounded `asyncio.Queue` of items (tensor, future, deadline); the
future exists before the item is queued; one task takes up to `max_batch_size` items within
`max_delay_s` of the first, drops the expired ones (LitServe's `collate_requests`), runs the batch in
a worker thread (`service.core.batch_runner`: the event loop never blocks) and fans the outputs out. A
failing batch fails exactly its own futures. An item may bring a `finish` function
(post-processing) that the worker thread applies to its output row after the batch: no further
thread hop per image.

A batch does not wait for images nobody is preparing: the detector announces the images it is
decoding (`incoming`), and once the queue is empty and none are announced the batch goes at once
instead of after `max_delay_s` (a lone request pays no delay; under load the queue is never empty).

`workers` batches may be in the backend at once (Triton's instance count): a CPU backend whose
runs are single-threaded answers more images/s with two independent batches in flight than with one
batch on two threads. A batch is formed once a worker is free, so it takes whatever queued
meanwhile; while other workers are idle it takes only its share. Batches enter the backend in the
order they were formed.

`lookahead` (set by the caller: 1 for a backend that computes off the host's CPU, 0 on the CPU):
that many more batches, ready batches, are formed while every worker is busy, but only from full
batches queued: each waits in a thread of its own and enters the backend the moment a batch leaves
it, and that batch is post-processed beside it, instead of the backend idling through the
post-processing and a round trip through a busy event loop (docs/benchmarks.md, "The ready batch").
Their images count against the queue bound, and those abandoned or expired by the time they start
are not run. On the CPU it gained nothing measurable (the cores are busy through the gap anyway).

Background images (a live stream's frames) queue behind interactive ones: the queue is ordered by
arrival time, a background image's counted `BACKGROUND_HANDICAP_S` later, so a request overtakes
the frames queued less than that before it (its latency does not grow with the streams' load) and a
frame waits at most that much longer than it would have (streams are not starved). Background images
are also admitted only into half of the queue, the other half kept for requests. With
`background_alone` (a CPU backend, where a batch costs what its images do) each background image
runs in a batch of its own: a request's batch holds only requests' images, and a request waits for
at most one frame's run per busy worker; on an accelerator, where a batch costs about what one image
does, frames fill batches like any image.

Stopping waits (bounded) for the batches in the worker threads: the caller releases the backend
only when `stop` says they are idle. `inflight_age` lets a watchdog see a batch stuck in the backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.batch_runner import Batch, BatchRunner, Dropped, Finish, InferFn, Item, Ran, dropped
from service.core.errors import DeadlineExceeded, InferenceFailed, Overloaded, ServiceError, ShuttingDown
from service.core.metrics import ModelMetrics
from service.core.postprocess import Postprocessed
from service.tracing import Attributes, PassTrace, batch_span, detach

__all__ = ["BatchOutput", "DynamicBatcher", "Finish", "InferFn"]

log = logging.getLogger(__name__)

BACKGROUND_HANDICAP_S = 0.5


class _Queue(asyncio.PriorityQueue[tuple[float, int, Item]]):
    """Images by rank (arrival time, a background image's handicapped), then submission order."""

    def head(self) -> Item:
        """The image `get` returns next (the queue is not empty)."""
        heap: list[tuple[float, int, Item]] = self._queue  # type: ignore[attr-defined]  # as `_get` reads it
        return heap[0][2]

    def take_nowait(self) -> Item:
        return self.get_nowait()[2]

    async def take(self) -> Item:
        return (await self.get())[2]


@dataclass(frozen=True)
class BatchOutput:
    """One image's share of a batch: `finish(row)` (the row itself without `finish`, the caller's to
    keep: never the backend's reused buffer), and how it got there: seconds queued, seconds of the
    backend call, images in the batch, which batch (numbered from 1 in the order batches start), when
    it entered the backend (time.monotonic()), and the batch's span when it was traced."""

    output: Any
    queue_s: float
    inference_s: float
    batch_size: int
    batch_id: int = 0
    started: float = 0.0
    batch_span: Any = None  # an opentelemetry SpanContext (service.tracing.batch_span)


class DynamicBatcher:
    """`submit` images, await their futures; `start` before and `stop` after (graceful drain)."""

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        queue_size: int,
        metrics: ModelMetrics,
        workers: int = 1,
        lookahead: int = 0,
        background_alone: bool = False,
        trace_attributes: Attributes | None = None,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_delay_s < 0 or workers < 1 or lookahead < 0:
            raise ValueError(
                "need max_batch_size >= 1, queue_size >= 1, max_delay_s >= 0, workers >= 1, lookahead >= 0"
            )
        self.max_batch_size, self.max_delay_s, self.workers = max_batch_size, max_delay_s, workers
        self.lookahead, self.background_alone = lookahead, background_alone
        self.trace_attributes = dict(trace_attributes or {})  # of each traced batch's span
        self._queue = _Queue(maxsize=queue_size)
        self._order = itertools.count()
        self._metrics = metrics
        self._runner = BatchRunner(infer, workers=workers, lookahead=lookahead, metrics=metrics)
        self._free = asyncio.Semaphore(workers + lookahead)  # batches formed and not yet answered
        self._changed = asyncio.Event()  # an image was queued or a batch was answered
        self._task: asyncio.Task[None] | None = None
        self._batches: dict[Batch, asyncio.Task[None]] = {}  # formed and not yet answered: their answering
        self._incoming = 0  # images being prepared, to be submitted soon
        self._accepting = False

    @property
    def queue_size(self) -> int:
        """Images the queue holds at most."""
        return self._queue.maxsize

    @property
    def queued(self) -> int:
        """Images in the queue, not yet in a batch."""
        return self._queue.qsize()

    @property
    def waiting(self) -> int:
        """Images accepted and not yet in the backend: queued, or in a batch formed ahead that no
        worker has taken yet. The queue bound and `yolor_queue_depth` count these."""
        return self._queue.qsize() + sum(len(b.items) for b in self._batches if b.ahead)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="yolor-batcher")
        self._accepting = True

    def submit(
        self,
        tensors: Sequence[np.ndarray],
        deadline: float,
        finish: Sequence[Finish] | None = None,
        *,
        background: bool = False,
        traces: Sequence[PassTrace | None] | None = None,
    ) -> list[asyncio.Future[BatchOutput]]:
        """Queue one request's images (all or none), each with its `finish` if given; raise
        ShuttingDown or Overloaded (queue full). A future fails with what its `finish` raised.
        `background`: behind interactive images (a stream's frames). `traces`: each image's, when
        its request is traced (its batch's span links to it)."""
        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        if self.queue_size - self.waiting < len(tensors):
            raise Overloaded(f"batch queue full ({self.waiting}/{self.queue_size} images waiting)")
        if finish is not None and len(finish) != len(tensors):
            raise ValueError(f"{len(finish)} finish functions for {len(tensors)} images")
        loop, now = asyncio.get_running_loop(), time.monotonic()
        rank = now + BACKGROUND_HANDICAP_S if background else now
        futures = []
        for i, tensor in enumerate(tensors):
            future: asyncio.Future[BatchOutput] = loop.create_future()
            trace = traces[i] if traces else None
            item = Item(tensor, future, deadline, now, finish[i] if finish else None, background, trace)
            self._queue.put_nowait((rank, next(self._order), item))
            futures.append(future)
        self._metrics.queue_depth.set(self.waiting)
        self._changed.set()
        return futures

    @contextlib.contextmanager
    def incoming(self, images: int, *, admit: bool = False, background: bool = False) -> Iterator[None]:
        """Announce `images` being prepared for `submit` (a batch waits for them, up to its delay).

        `admit`: first raise Overloaded unless the queue has room for them beside those waiting and
        those already being prepared, so that a request the queue will refuse is refused before its
        images are decoded (a burst is shed for the cost of reading it, not of decoding it).
        `background` images are admitted into half of the queue only."""
        room = self.queue_size // 2 if background else self.queue_size
        if admit and room - self.waiting - self._incoming < images:
            raise Overloaded(
                f"batch queue full ({self.waiting}/{self.queue_size} images waiting, "
                f"{self._incoming} being prepared)"
            )
        self._incoming += images
        try:
            yield
        finally:
            self._incoming -= images

    def inflight_age(self) -> float:
        """Seconds the oldest batch now in the backend has been running; 0.0 when none is."""
        running = [
            b.started
            for b in self._batches
            if b.started is not None and b.thread is not None and not b.thread.done()
        ]
        return time.monotonic() - min(running) if running else 0.0

    async def stop(self, timeout_s: float) -> bool:
        """Refuse new work, finish what was accepted and fail what is left, all within `timeout_s`.

        Returns True when no batch is left in the backend (it may be released), False when one is
        still running at the timeout (a hung backend: it must not be released under it).
        """
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            log.warning(
                "batch queue not drained after %.1f s; failing %d images", timeout_s, self._queue.qsize()
            )
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._runner.close()  # batches still waiting for their turn give up: failed below
        batches = list(self._batches)
        for answering in self._batches.values():  # on cancellation the threads run on: waited for below
            answering.cancel()
        await asyncio.gather(*self._batches.values(), return_exceptions=True)
        leftover = [i for b in batches for i in b.items]
        leftover += [self._queue.take_nowait() for _ in range(self._queue.qsize())]
        for item in leftover:
            if self._fail(item, ShuttingDown("the server shut down before this image was run")):
                self._metrics.dropped_images.labels(reason="shutdown").inc()
        self._metrics.queue_depth.set(0)
        threads = [b.thread for b in batches if b.thread is not None]
        idle = await self._wait_for_threads(threads, deadline - time.monotonic())
        return idle

    async def _wait_for_threads(
        self, threads: list[concurrent.futures.Future[Ran]], timeout_s: float
    ) -> bool:
        running = [t for t in threads if not t.done()]
        if not running:
            return True
        _, not_done = await asyncio.to_thread(concurrent.futures.wait, running, max(0.0, timeout_s))
        if not_done:
            log.error(
                "%d batch(es) still running at shutdown, the oldest for %.1f s",
                len(not_done),
                self.inflight_age(),
            )
        return not not_done

    async def _loop(self) -> None:
        detach()  # started by the request that loaded the model, maybe
        while True:
            await self._free.acquire()  # a worker, or a place ahead, is free
            try:
                await self._worker_free_or_full_batch()
                items = await self._collect()
            except BaseException:
                self._free.release()
                raise
            live = self._drop_stale(items)
            if live:
                batch = self._runner.form(live, ahead=len(self._batches) >= self.workers)
                self._batches[batch] = asyncio.create_task(self._run(batch, items), name="yolor-batch")
            else:
                self._release(items)
            self._metrics.queue_depth.set(self.waiting)

    def _release(self, collected: list[Item]) -> None:
        """A formed batch is over (answered, failed, or all its items dropped): its place is free and
        its items are done in the queue."""
        self._free.release()
        self._changed.set()
        for _ in collected:
            self._queue.task_done()

    async def _worker_free_or_full_batch(self) -> None:
        """Return once a worker is free, or (every worker busy: a batch formed ahead, with a
        lookahead) once a full batch is queued."""
        while len(self._batches) >= self.workers and self._queue.qsize() < self.max_batch_size:
            self._changed.clear()
            await self._changed.wait()

    async def _collect(self) -> list[Item]:
        """The first item, then whatever arrives until the batch is full, `max_delay_s` has passed or
        nothing more is on its way (with `background_alone`, until the next image would put a
        background image beside another image: the batch goes, as nothing is ranked before it). While other
        workers are idle, only this worker's share of what is queued now: two images on two idle
        single-threaded workers run side by side, not one after the other in one batch."""
        items = [await self._queue.take()]

        def fits() -> bool:  # the queue's next image may join
            alone = self.background_alone and (items[0].background or self._queue.head().background)
            return not alone

        idle_others = self.workers - len(self._batches) - 1
        if idle_others > 0:  # share what is queued with the idle workers, and wait for nothing
            share = -(-(1 + self._queue.qsize()) // (idle_others + 1))  # ceil
            while len(items) < min(share, self.max_batch_size) and not self._queue.empty() and fits():
                items.append(self._queue.take_nowait())
            return items
        flush_at = time.monotonic() + self.max_delay_s
        while len(items) < self.max_batch_size:
            if not self._queue.empty():
                if not fits():
                    break
                items.append(self._queue.take_nowait())
                continue
            if self._incoming == 0:  # nothing else on its way
                break
            remaining = flush_at - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._wait_for_an_image(), remaining)
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                break
        return items

    async def _wait_for_an_image(self) -> None:
        """Until the queue holds an image (not taking it: it may not fit the batch)."""
        while self._queue.empty():
            self._changed.clear()
            await self._changed.wait()

    def _drop_stale(self, items: list[Item]) -> list[Item]:
        """Items still worth running: not abandoned by their caller and not past their deadline."""
        now, live = time.monotonic(), []
        for item in items:
            reason = dropped(item, now)
            if reason is None:
                live.append(item)
            else:
                self._drop(item, reason)
        return live

    def _drop(self, item: Item, why: Dropped) -> None:
        self._metrics.dropped_images.labels(reason=why.reason).inc()
        if why.reason == "expired":
            self._fail(item, DeadlineExceeded("request deadline passed while queued"))

    async def _run(self, batch: Batch, collected: list[Item]) -> None:
        """Run `batch` in a worker thread and answer its items; `collected` (the live items and the
        dropped ones) are marked done in the queue at the end, and the worker is freed."""
        items, batch_id = batch.items, batch.turn + 1
        try:
            # On cancellation (stop) the thread runs on, even one not started yet (shielded: every
            # turn is taken, or a later batch would wait for it forever): stop() waits for it before
            # the backend may be closed, and fails the batch's futures (it stays in `_batches`).
            ran = await asyncio.shield(asyncio.wrap_future(self._runner.submit(batch)))
        except Exception as e:
            self._metrics.inference_errors.inc()
            log.exception("batch of %d failed", len(items))
            error = (
                e if isinstance(e, ServiceError) else InferenceFailed(f"inference failed: {type(e).__name__}")
            )
            for item in items:
                self._fail(item, error)
            del self._batches[batch]
            self._release(collected)
            return
        self._metrics.queue_depth.set(self.waiting)
        if ran.size:
            self._metrics.inference.observe(ran.inference_s)
            self._metrics.batch_size.observe(ran.size)
        assert batch.started is not None  # set by the thread
        traced = self._batch_span(batch.started, items, ran)
        for item, answer in zip(items, ran.answers, strict=True):
            if isinstance(answer, Dropped):
                self._drop(item, answer)
                continue
            queued_s = batch.started - item.queued_at
            self._metrics.queue_wait.observe(queued_s)
            if item.future.done():
                continue
            if isinstance(answer, BaseException):
                item.future.set_exception(answer)
            else:
                output = BatchOutput(
                    answer, queued_s, ran.inference_s, ran.size, batch_id, batch.started, batch_span=traced
                )
                item.future.set_result(output)
        del self._batches[batch]
        self._release(collected)

    def _batch_span(self, started: float, items: list[Item], ran: Ran) -> Any:
        """The batch's span when it ran a traced image (service.tracing.batch_span), else None;
        never raises (its images' answers come after it)."""
        try:
            return self._traced_batch(started, items, ran)
        except Exception:
            log.exception("the span of a batch of %d failed", len(items))
            return None

    def _traced_batch(self, started: float, items: list[Item], ran: Ran) -> Any:
        traced = [
            item.trace
            for item, answer in zip(items, ran.answers, strict=True)
            if item.trace is not None and not isinstance(answer, Dropped)
        ]
        if not traced:
            return None
        found = [a.detections for a in ran.answers if isinstance(a, Postprocessed)]
        attributes = {
            **self.trace_attributes,
            "yolor.batch.size": ran.size,
            "yolor.batch.traced_images": len(traced),
            "yolor.batch.detections": sum(len(d) for d in found),
        }
        return batch_span(traced, started, started + ran.inference_s, attributes)

    @staticmethod
    def _fail(item: Item, error: BaseException) -> bool:
        """Fail the item's future unless its caller is gone; whether it was failed."""
        if item.future.done():
            return False
        item.future.set_exception(error)
        return True
