"""Dynamic batching: images from concurrent requests grouped into one backend call.

After Ray Serve's `batching.py`: a bounded `asyncio.Queue` of items (tensor, future, deadline); the
future exists before the item is queued; one task takes up to `max_batch_size` items within
`max_delay_s` of the first, drops the expired ones (LitServe's `collate_requests`), runs the batch in
a worker thread (the event loop never blocks) and fans the outputs out. A failing batch fails
exactly its own futures. An item may bring a `finish` function (post-processing) that the worker
thread applies to its output row right after the batch: no further thread hop per image, and the
backend's output buffer is read before the next call can reuse it.

A batch does not wait for images nobody is preparing: the detector announces the images it is
decoding (`incoming`), and once the queue is empty and none are announced the batch goes at once
instead of after `max_delay_s` (a lone request pays no delay; under load the queue is never empty).

`workers` batches may be in the backend at once (Triton's instance count): a CPU backend whose
runs are single-threaded answers more images/s with two independent batches in flight than with one
batch on two threads. A batch is formed only once a worker is free, so it takes whatever queued
meanwhile; while other workers are idle it takes only its share.

Stopping waits (bounded) for the batches in the worker threads: the caller releases the backend
only when `stop` says they are idle. `inflight_age` lets a watchdog see a batch stuck in the backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, Overloaded, ServiceError, ShuttingDown
from service.metrics import Metrics

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], np.ndarray]
Finish = Callable[[np.ndarray], Any]  # worker thread: one output row -> the image's answer


@dataclass(frozen=True)
class BatchOutput:
    """One image's share of a batch: `finish(row)` (a copy of the row without `finish`), and how
    it got there: seconds queued, seconds of the backend call, images in the batch, which batch
    (numbered from 1 in the order batches start)."""

    output: Any
    queue_s: float
    inference_s: float
    batch_size: int
    batch_id: int = 0


@dataclass(eq=False)
class _Item:
    tensor: np.ndarray
    future: asyncio.Future[BatchOutput]
    deadline: float  # time.monotonic() seconds
    queued_at: float
    finish: Finish | None


@dataclass(frozen=True)
class _Ran:
    """A batch's answers from the worker thread: one per item (a value, or what `finish` raised)."""

    answers: list[Any | BaseException]
    inference_s: float


@dataclass(eq=False)
class _Batch:
    items: list[_Item]
    task: asyncio.Task[None] | None = None  # answers the items once the thread is done
    thread: concurrent.futures.Future[_Ran] | None = None  # the call in the worker thread
    started: float = 0.0


class DynamicBatcher:
    """`submit` images, await their futures; `start` before and `stop` after (graceful drain)."""

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        queue_size: int,
        metrics: Metrics,
        workers: int = 1,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_delay_s < 0 or workers < 1:
            raise ValueError("need max_batch_size >= 1, queue_size >= 1, max_delay_s >= 0, workers >= 1")
        self._infer = infer
        self.max_batch_size, self.max_delay_s, self.workers = max_batch_size, max_delay_s, workers
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="yolor-infer")
        self._free = asyncio.Semaphore(workers)
        self._task: asyncio.Task[None] | None = None
        self._batches: set[_Batch] = set()  # formed and not yet answered
        self._incoming = 0  # images being prepared, to be submitted soon
        self._batch_count = 0
        self._accepting = False

    @property
    def queue_size(self) -> int:
        """Images the queue holds at most."""
        return self._queue.maxsize

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="yolor-batcher")
        self._accepting = True

    def submit(
        self, tensors: Sequence[np.ndarray], deadline: float, finish: Sequence[Finish] | None = None
    ) -> list[asyncio.Future[BatchOutput]]:
        """Queue one request's images (all or none), each with its `finish` if given; raise
        ShuttingDown or Overloaded (queue full). A future fails with what its `finish` raised."""
        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        if self.queue_size - self._queue.qsize() < len(tensors):
            raise Overloaded(f"batch queue full ({self._queue.qsize()}/{self._queue.maxsize} images waiting)")
        if finish is not None and len(finish) != len(tensors):
            raise ValueError(f"{len(finish)} finish functions for {len(tensors)} images")
        loop, now = asyncio.get_running_loop(), time.monotonic()
        futures = []
        for i, tensor in enumerate(tensors):
            future: asyncio.Future[BatchOutput] = loop.create_future()
            self._queue.put_nowait(_Item(tensor, future, deadline, now, finish[i] if finish else None))
            futures.append(future)
        self._metrics.queue_depth.set(self._queue.qsize())
        return futures

    @contextlib.contextmanager
    def incoming(self, images: int) -> Iterator[None]:
        """Announce `images` being prepared for `submit` (a batch waits for them, up to its delay)."""
        self._incoming += images
        try:
            yield
        finally:
            self._incoming -= images

    def inflight_age(self) -> float:
        """Seconds the oldest batch now in the backend has been running; 0.0 when none is."""
        running = [b.started for b in self._batches if b.thread is not None and not b.thread.done()]
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
        batches = list(self._batches)
        for batch in batches:  # on cancellation the threads run on: waited for below
            if batch.task is not None:
                batch.task.cancel()
        await asyncio.gather(*(b.task for b in batches if b.task is not None), return_exceptions=True)
        leftover = [i for b in batches for i in b.items]
        leftover += [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for item in leftover:
            if self._fail(item, ShuttingDown("the server shut down before this image was run")):
                self._metrics.dropped_images.labels(reason="shutdown").inc()
        self._metrics.queue_depth.set(0)
        threads = [b.thread for b in batches if b.thread is not None]
        idle = await self._wait_for_threads(threads, deadline - time.monotonic())
        self._executor.shutdown(wait=False)
        return idle

    async def _wait_for_threads(
        self, threads: list[concurrent.futures.Future[_Ran]], timeout_s: float
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
        while True:
            await self._free.acquire()  # form a batch only once a worker can take it
            try:
                items = await self._collect()
            except BaseException:
                self._free.release()
                raise
            self._metrics.queue_depth.set(self._queue.qsize())
            live = self._drop_finished(items)
            if not live:
                self._done(items)
                continue
            batch = _Batch(live)
            self._batches.add(batch)
            batch.task = asyncio.create_task(self._run(batch, items), name="yolor-batch")

    def _done(self, items: list[_Item]) -> None:
        self._free.release()
        for _ in items:
            self._queue.task_done()

    async def _collect(self) -> list[_Item]:
        """The first item, then whatever arrives until the batch is full, `max_delay_s` has passed or
        nothing more is on its way. While other workers are idle, only this worker's share of what
        is queued now: two images on two idle single-threaded workers run side by side, not one
        after the other in one batch."""
        items = [await self._queue.get()]
        idle_others = self.workers - len(self._batches) - 1
        if idle_others > 0:  # share what is queued with the idle workers, and wait for nothing
            share = -(-(1 + self._queue.qsize()) // (idle_others + 1))  # ceil
            while len(items) < min(share, self.max_batch_size) and not self._queue.empty():
                items.append(self._queue.get_nowait())
            return items
        flush_at = time.monotonic() + self.max_delay_s
        while len(items) < self.max_batch_size:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            if self._incoming == 0:  # nothing else on its way
                break
            remaining = flush_at - time.monotonic()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                break
        return items

    def _drop_finished(self, items: list[_Item]) -> list[_Item]:
        """Items still worth running: not abandoned by their caller and not past their deadline."""
        now, live = time.monotonic(), []
        for item in items:
            if item.future.done():  # the client disconnected, the request timed out or failed
                self._metrics.dropped_images.labels(reason="abandoned").inc()
                continue
            if now >= item.deadline:
                self._fail(item, DeadlineExceeded("request deadline passed while queued"))
                self._metrics.dropped_images.labels(reason="expired").inc()
                continue
            live.append(item)
        return live

    async def _run(self, batch: _Batch, collected: list[_Item]) -> None:
        """Run `batch` in a worker thread and answer its items; `collected` (the live items and the
        dropped ones) are marked done in the queue at the end, and the worker is freed."""
        items = batch.items
        started = batch.started = time.monotonic()
        self._batch_count += 1
        batch_id = self._batch_count
        self._metrics.inflight_batches.inc()
        try:
            batch.thread = self._executor.submit(self._run_in_thread, items)
            # On cancellation (stop) the thread runs on: stop() waits for it before the backend may
            # be closed, and fails the batch's futures (the batch stays in `_batches`).
            ran = await asyncio.wrap_future(batch.thread)
        except Exception as e:
            self._metrics.inference_errors.inc()
            log.exception("batch of %d failed", len(items))
            error = (
                e if isinstance(e, ServiceError) else InferenceFailed(f"inference failed: {type(e).__name__}")
            )
            for item in items:
                self._fail(item, error)
            self._batches.discard(batch)
            self._done(collected)
            return
        finally:
            self._metrics.inflight_batches.dec()
        self._metrics.inference.observe(ran.inference_s)
        self._metrics.batch_size.observe(len(items))
        for item, answer in zip(items, ran.answers, strict=True):
            queued_s = started - item.queued_at
            self._metrics.queue_wait.observe(queued_s)
            if item.future.done():
                continue
            if isinstance(answer, BaseException):
                item.future.set_exception(answer)
            else:
                item.future.set_result(BatchOutput(answer, queued_s, ran.inference_s, len(items), batch_id))
        self._batches.discard(batch)
        self._done(collected)

    def _run_in_thread(self, items: list[_Item]) -> _Ran:
        """Worker thread: stack, infer, check one output per input, then each item's `finish` (or a
        copy of its row: backends reuse their output buffers) before the next call."""
        start = time.monotonic()
        outputs = self._infer(np.stack([item.tensor for item in items]))
        inference_s = time.monotonic() - start
        if len(outputs) != len(items):
            raise InferenceFailed(f"backend returned {len(outputs)} outputs for a batch of {len(items)}")
        answers: list[Any | BaseException] = []
        for item, row in zip(items, outputs, strict=True):
            try:
                answers.append(np.array(row, copy=True) if item.finish is None else item.finish(row))
            except Exception as e:  # this image's answer; the batch's other images are unaffected
                answers.append(e)
        return _Ran(answers, inference_s)

    @staticmethod
    def _fail(item: _Item, error: BaseException) -> bool:
        """Fail the item's future unless its caller is gone; whether it was failed."""
        if item.future.done():
            return False
        item.future.set_exception(error)
        return True
