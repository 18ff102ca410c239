"""The batcher's worker-thread side: formed batches run in threads, enter the backend in the order
they were formed and at most `workers` at once, and each image's `finish` (post-processing) runs on
its output row in the same thread (no further hop per image).

The event loop (`service.core.batcher`) forms a `Batch` (`BatchRunner.form`, which gives it its turn),
`submit`s it and awaits the `Ran` answers. With a `lookahead` (batches formed ahead of a free worker,
for a backend that computes off the host's CPU), that many more threads hold batches waiting for
their turn, and a batch's turn ends before its post-processing, so that the next batch enters the
backend at once and runs beside it. Backends may reuse their output buffers: the rows are read before
the next batch may enter (no lookahead), or copied first if they are a view of the backend's buffer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.errors import InferenceFailed
from service.core.metrics import ModelMetrics
from service.tracing import PassTrace

InferFn = Callable[[np.ndarray], np.ndarray]
Finish = Callable[[np.ndarray], Any]  # worker thread: one output row -> the image's answer


@dataclass(eq=False)
class Item:
    tensor: np.ndarray
    future: asyncio.Future[Any]  # of a service.core.batcher.BatchOutput
    deadline: float  # time.monotonic() seconds
    queued_at: float
    finish: Finish | None
    background: bool = False  # a stream's frame: queued behind interactive images
    trace: PassTrace | None = None  # a sampled request's image: its batch's span links to it


@dataclass(frozen=True)
class Dropped:
    """An item not run: `reason` is "abandoned" (its caller is gone) or "expired" (past its deadline)."""

    reason: str


def dropped(item: Item, now: float) -> Dropped | None:
    """Why `item` is no longer worth running at `now`, if it is not (the event loop's check when a
    batch is formed, and the worker thread's when it enters the backend: there `done()` only reads
    the future's state, and a caller gone a moment later costs at most one wasted image)."""
    if item.future.done():  # the client disconnected, the request timed out or failed
        return Dropped("abandoned")
    if now >= item.deadline:
        return Dropped("expired")
    return None


@dataclass(frozen=True)
class Ran:
    """A batch's answers from the worker thread: one per item (a value, what `finish` raised, or
    `Dropped`), and how many images the backend ran."""

    answers: list[Any | BaseException | Dropped]
    inference_s: float
    size: int


@dataclass(eq=False)
class Batch:
    """A formed batch, the runner's record of it (the event loop reads it)."""

    items: list[Item]
    turn: int  # batches enter the backend in the order they were formed: 0, 1, 2, ...
    ahead: bool = False  # formed while every worker was busy (lookahead), and not yet in the backend
    started: float | None = None  # when it entered the backend (time.monotonic())
    thread: concurrent.futures.Future[Ran] | None = None  # the call in the worker thread


class BatchRunner:
    """Runs `Batch`es through `infer` in worker threads; `close` makes batches still waiting give up."""

    def __init__(self, infer: InferFn, *, workers: int, lookahead: int, metrics: ModelMetrics) -> None:
        self._infer, self.workers, self.lookahead = infer, workers, lookahead
        self._metrics = metrics
        # A thread per batch in the backend, and one per batch formed ahead, waiting for its turn.
        self._executor = ThreadPoolExecutor(max_workers=workers + lookahead, thread_name_prefix="yolor-infer")
        self._formed = 0  # turns given out (event loop only)
        self._turns = threading.Condition()  # guards the three below, shared with the worker threads
        self._next_turn = 0  # the turn of the next batch to enter the backend
        self._in_backend = 0
        self._closing = False

    def form(self, items: list[Item], *, ahead: bool) -> Batch:
        """A batch of `items` with the next turn (event loop only); `ahead`: formed while every worker
        is busy."""
        turn, self._formed = self._formed, self._formed + 1
        return Batch(items, turn, ahead=ahead)

    def submit(self, batch: Batch) -> concurrent.futures.Future[Ran]:
        batch.thread = self._executor.submit(self._run, batch)
        return batch.thread

    def close(self) -> None:
        """Batches still waiting for their turn give up without running (the batcher's stop fails
        their images); those in the backend run on. The threads end once their batches are done."""
        with self._turns:
            self._closing = True
            self._turns.notify_all()
        self._executor.shutdown(wait=False)

    def _run(self, batch: Batch) -> Ran:
        """Worker thread: stack the batch, then in its turn drop what is no longer worth running (a
        batch formed ahead may have waited), infer and check one output per input; then each item's
        `finish` on its row (or a copy of the row). With a lookahead the turn ends before the
        post-processing (the outputs copied first if they are a view of the backend's buffer)."""
        try:  # before its turn: it waits instead
            stacked: np.ndarray | None = np.stack([item.tensor for item in batch.items])
        except Exception as e:  # the batch fails, in its turn: later batches wait for that turn
            stacked, unstackable = None, e
        with self._turn(batch) as start:
            if start is None:  # closing: the batcher fails the items
                return Ran([Dropped("abandoned") for _ in batch.items], 0.0, 0)
            if stacked is None:
                raise unstackable
            answers: list[Any | BaseException | Dropped] = [dropped(item, start) for item in batch.items]
            alive = [reason is None for reason in answers]
            live = sum(alive)
            if not live:
                return Ran(answers, 0.0, 0)
            self._metrics.inflight_batches.inc()
            try:
                outputs = self._infer(stacked if live == len(alive) else stacked[alive])
            finally:
                self._metrics.inflight_batches.dec()
            inference_s = time.monotonic() - start
            if len(outputs) != live:
                raise InferenceFailed(f"backend returned {len(outputs)} outputs for a batch of {live}")
            if not self.lookahead:  # post-processing in the turn: no batch waits to run beside it
                return Ran(_answers(batch.items, answers, outputs, copy=True), inference_s, live)
            if outputs.base is not None:  # a view of a buffer the next call may reuse (Backend.infer)
                outputs = np.array(outputs, copy=True)
        return Ran(_answers(batch.items, answers, outputs, copy=False), inference_s, live)

    @contextlib.contextmanager
    def _turn(self, batch: Batch) -> Iterator[float | None]:
        """Wait for `batch`'s turn and a free place in the backend, hold it: the time it entered, or
        None when closing first (later turns are then not waited for)."""
        with self._turns:
            self._turns.wait_for(
                lambda: self._closing or (self._next_turn == batch.turn and self._in_backend < self.workers)
            )
            entered = not self._closing
            if entered:
                self._next_turn += 1
                self._in_backend += 1
                batch.started, batch.ahead = time.monotonic(), False
        if not entered:
            yield None
            return
        try:
            yield batch.started
        finally:
            with self._turns:
                self._in_backend -= 1
                self._turns.notify_all()


def _answers(
    items: list[Item], answers: list[Any | BaseException | Dropped], outputs: np.ndarray, *, copy: bool
) -> list[Any | BaseException | Dropped]:
    """`answers` with each item that ran (None in it) answered: `finish(row)`, or the row (copied
    when `copy`); what a `finish` raises is that image's answer only."""
    rows = iter(outputs)
    for i, item in enumerate(items):
        if answers[i] is not None:  # dropped
            continue
        row = next(rows)
        try:
            if item.finish is not None:
                answers[i] = item.finish(row)
            else:
                answers[i] = np.array(row, copy=True) if copy else row
        except Exception as e:
            answers[i] = e
    return answers
