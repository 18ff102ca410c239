"""DynamicBatcher with plain-function models: batching, order, bounds, deadlines, failures, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.core.batcher import DynamicBatcher
from service.core.errors import DeadlineExceeded, InferenceFailed, Overloaded, ShuttingDown
from service.core.metrics import Metrics

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

TIMEOUT = 5.0  # every await in these tests is bounded: a hang fails instead of blocking the suite

LABELS = {"model": "m", "version": "1"}  # what Metrics().for_model("m", 1) records under


def item(value: float) -> np.ndarray:
    return np.full((1, 2, 2), value, np.float32)


class Model:
    """Output row = 10 * the input's value; records batch sizes; optionally held by a gate."""

    def __init__(self, *, gated: bool = False, fail_on: float | None = None) -> None:
        self.sizes: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()
        if not gated:
            self.release.set()
        self.fail_on = fail_on

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        values = batch[:, 0, 0, 0]
        if self.fail_on is not None and np.any(values == self.fail_on):
            raise RuntimeError("bad input in this batch")
        return values[:, None] * 10


async def started(
    model,
    *,
    max_batch_size=4,
    max_delay_s=0.02,
    queue_size=64,
    accelerator=False,
    metrics=None,
    background_alone=False,
) -> DynamicBatcher:
    """`accelerator`: as the server sets it up for a GPU backend, with one batch of lookahead."""
    batcher = DynamicBatcher(
        model,
        max_batch_size=max_batch_size,
        max_delay_s=max_delay_s,
        queue_size=queue_size,
        metrics=metrics or Metrics().for_model("m", 1),
        lookahead=1 if accelerator else 0,
        background_alone=background_alone,
    )
    await batcher.start()
    return batcher


def later(seconds: float = TIMEOUT) -> float:
    return time.monotonic() + seconds


async def results(futures) -> list:
    return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), TIMEOUT)


async def wait_for_event(event: threading.Event) -> None:
    await asyncio.wait_for(asyncio.to_thread(event.wait, TIMEOUT), TIMEOUT)


async def test_concurrent_requests_are_batched_and_order_is_preserved():
    model = Model()
    batcher = await started(model, max_batch_size=4)

    async def request(first: float, count: int) -> list:
        futures = batcher.submit([item(first + i) for i in range(count)], later())
        return await results(futures)

    answers = await asyncio.gather(request(0, 3), request(10, 2), request(20, 1), request(30, 4))
    await batcher.stop(TIMEOUT)
    for first, outputs in zip((0, 10, 20, 30), answers, strict=True):
        assert [float(o.output[0]) for o in outputs] == [10 * (first + i) for i in range(len(outputs))]
    assert model.sizes == [4, 4, 2]  # 10 images from 4 requests in 3 backend calls
    assert [o.batch_size for o in answers[0]] == [4, 4, 4]


async def test_a_lone_item_with_nothing_else_coming_goes_at_once():
    model = Model()
    batcher = await started(model, max_delay_s=0.5)
    start = time.monotonic()
    (output,) = await results(batcher.submit([item(1)], later()))
    waited = time.monotonic() - start
    await batcher.stop(TIMEOUT)
    assert model.sizes == [1]
    assert waited < 0.25 and output.queue_s < 0.25  # not the 0.5 s delay


async def test_a_batch_waits_at_most_max_delay_for_announced_images():
    model = Model()
    batcher = await started(model, max_delay_s=0.05)
    with batcher.incoming(1):  # an image being decoded that never arrives (its decode failed)
        start = time.monotonic()
        (output,) = await results(batcher.submit([item(1)], later()))
        waited = time.monotonic() - start
    await batcher.stop(TIMEOUT)
    assert model.sizes == [1]
    assert 0.04 <= waited < 1.0
    assert output.queue_s >= 0.04


async def test_announced_items_arriving_within_the_delay_join_the_batch():
    model = Model()
    batcher = await started(model, max_delay_s=0.3)
    with batcher.incoming(2):
        first = batcher.submit([item(1)], later())
        await asyncio.sleep(0.02)
        second = batcher.submit([item(2), item(3)], later())
    outputs = await results(first + second)
    await batcher.stop(TIMEOUT)
    assert model.sizes == [3]
    assert [float(o.output[0]) for o in outputs] == [10, 20, 30]


async def test_unannounced_items_do_not_hold_a_batch_back():
    model = Model()
    batcher = await started(model, max_delay_s=0.3)
    first = batcher.submit([item(1)], later())
    await asyncio.sleep(0.02)
    second = batcher.submit([item(2), item(3)], later())
    outputs = await results(first + second)
    await batcher.stop(TIMEOUT)
    assert model.sizes == [1, 2]
    assert [float(o.output[0]) for o in outputs] == [10, 20, 30]


@pytest.mark.parametrize(("workers", "sizes"), [(1, [4]), (2, [2, 2]), (4, [1, 1, 1, 1])])
async def test_queued_images_are_shared_between_idle_workers(workers, sizes):
    model = Model()
    batcher = DynamicBatcher(
        model,
        max_batch_size=8,
        max_delay_s=0.5,
        queue_size=64,
        metrics=Metrics().for_model("m", 1),
        workers=workers,
    )
    await batcher.start()
    futures = batcher.submit([item(i) for i in range(4)], later())  # all queued before the loop runs
    start = time.monotonic()
    outputs = await results(futures)
    assert await batcher.stop(TIMEOUT)
    assert sorted(model.sizes) == sizes and time.monotonic() - start < 0.4  # no wait for more
    assert [float(o.output[0]) for o in outputs] == [0, 10, 20, 30]


async def test_workers_keep_that_many_batches_in_the_backend_at_once():
    class Counting(Model):
        def __init__(self) -> None:
            super().__init__(gated=True)
            self.lock, self.inside, self.most = threading.Lock(), 0, 0
            self.both = threading.Event()

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            with self.lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
                if self.inside == 2:
                    self.both.set()
            try:
                return super().__call__(batch)
            finally:
                with self.lock:
                    self.inside -= 1

    model = Counting()
    batcher = DynamicBatcher(
        model,
        max_batch_size=2,
        max_delay_s=0.0,
        queue_size=64,
        metrics=Metrics().for_model("m", 1),
        workers=2,
    )
    await batcher.start()
    try:
        futures = batcher.submit([item(i) for i in range(6)], later())
        await wait_for_event(model.both)  # two batches of 2 in the backend, 2 images still queued
        assert batcher.inflight_age() > 0
        await asyncio.sleep(0.05)
        assert model.most == 2 and sorted(model.sizes) == [2, 2]
    finally:
        model.release.set()
    outputs = await results(futures)
    assert await batcher.stop(TIMEOUT)
    assert [float(o.output[0]) for o in outputs] == [10 * i for i in range(6)]
    # the last two: one batch of 2, or 1 + 1 when both workers came free together (shared)
    assert model.most == 2 and model.sizes[:2] == [2, 2] and sorted(model.sizes[2:]) in ([2], [1, 1])
    assert batcher.inflight_age() == 0.0


async def test_a_full_queue_refuses_whole_requests():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=1, queue_size=3)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)  # item 0 is in the backend, the queue is empty
        queued = batcher.submit([item(1), item(2)], later())
        with pytest.raises(Overloaded):
            batcher.submit([item(3), item(4)], later())  # 2 images, 1 slot: nothing is queued
        queued += batcher.submit([item(5)], later())  # the last slot is still free
        with pytest.raises(Overloaded):
            batcher.submit([item(6)], later())
    finally:
        model.release.set()
    outputs = await results(running + queued)
    await batcher.stop(TIMEOUT)
    assert [float(o.output[0]) for o in outputs] == [0, 10, 20, 50]


async def test_admission_counts_images_still_being_prepared():
    """A request the queue cannot take beside those waiting and those being decoded is refused on
    arrival (before its own decode); without `admit` the announcement reserves nothing."""
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=1, queue_size=3)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)  # the queue is empty: 3 free slots
        with batcher.incoming(2, admit=True):  # 2 being decoded: 1 slot left for others
            with pytest.raises(Overloaded, match="2 being prepared"), batcher.incoming(2, admit=True):
                pass
            with batcher.incoming(1, admit=True):  # fits exactly
                queued = batcher.submit([item(1)], later())
            with batcher.incoming(5):  # not admitted: announcing alone never refuses
                pass
            queued += batcher.submit([item(2), item(3)], later())
        with pytest.raises(Overloaded), batcher.incoming(1, admit=True):  # 3 waiting: full
            pass
    finally:
        model.release.set()
    outputs = await results(running + queued)
    await batcher.stop(TIMEOUT)
    assert [float(o.output[0]) for o in outputs] == [0, 10, 20, 30]


async def test_background_images_queue_behind_interactive_ones_up_to_their_handicap():
    """A stream's frames (background) are overtaken by a request's images queued less than
    BACKGROUND_HANDICAP_S (0.5 s) after them, not by later ones; among equals, arrival order."""
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=1)
    try:
        running = batcher.submit([item(0)], later(10_000))
        await wait_for_event(model.entered)  # the backend is busy: everything below queues
        queued = batcher.submit([item(1)], later(10_000), background=True)  # a frame at t
        queued += batcher.submit([item(2)], later(10_000), background=True)  # another at t
        await asyncio.sleep(0.1)
        queued += batcher.submit([item(3)], later(10_000))  # a request 0.1 s later: ahead of both
        await asyncio.sleep(0.5)
        queued += batcher.submit([item(4)], later(10_000))  # 0.6 s later: behind them
    finally:
        model.release.set()
    outputs = await results(running + queued)
    await batcher.stop(TIMEOUT)
    order = sorted(outputs, key=lambda o: o.batch_id)
    assert [float(o.output[0]) for o in order] == [0, 30, 10, 20, 40]


@pytest.mark.parametrize("alone", [True, False])
async def test_background_images_run_alone_on_the_cpu_and_fill_batches_on_an_accelerator(alone):
    """`background_alone` (a CPU backend): a request's batch takes no frame and each frame is a batch
    of its own; without it frames fill a request's batch up to its size, in queue order."""
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=4, background_alone=alone)
    try:
        running = batcher.submit([item(0)], later(10_000))
        await wait_for_event(model.entered)  # the backend is busy: everything below queues
        queued = batcher.submit([item(1)], later(10_000), background=True)
        queued += batcher.submit([item(2)], later(10_000), background=True)
        queued += batcher.submit([item(3), item(4)], later(10_000))  # a request: ahead of the frames
        queued += batcher.submit([item(5)], later(10_000), background=True)
    finally:
        model.release.set()
    outputs = await results(running + queued)
    await batcher.stop(TIMEOUT)
    batches: dict[int, list[float]] = {}
    for output in outputs:
        batches.setdefault(output.batch_id, []).append(float(output.output[0]))
    by_turn = [sorted(batches[i]) for i in sorted(batches)]
    if alone:
        assert by_turn == [[0], [30, 40], [10], [20], [50]]
    else:
        assert by_turn == [[0], [10, 20, 30, 40], [50]]


async def test_background_images_are_admitted_into_half_of_the_queue():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=1, queue_size=4)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)  # the queue is empty: 4 slots, 2 for frames
        with batcher.incoming(1, admit=True, background=True):
            queued = batcher.submit([item(1)], later(), background=True)
        with batcher.incoming(1, admit=True, background=True):
            queued += batcher.submit([item(2)], later(), background=True)
        with pytest.raises(Overloaded), batcher.incoming(1, admit=True, background=True):
            pass  # half the queue holds frames: no more
        with batcher.incoming(2, admit=True):  # requests still have the other half
            queued += batcher.submit([item(3), item(4)], later())
    finally:
        model.release.set()
    outputs = await results(running + queued)
    await batcher.stop(TIMEOUT)
    assert sorted(float(o.output[0]) for o in outputs) == [0, 10, 20, 30, 40]


async def test_expired_items_are_dropped_before_inference():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=1)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)
        expiring = batcher.submit([item(1)], later(0.05))
        fine = batcher.submit([item(2)], later())
        await asyncio.sleep(0.1)
    finally:
        model.release.set()
    outputs = await results(running + expiring + fine)
    await batcher.stop(TIMEOUT)
    assert isinstance(outputs[1], DeadlineExceeded)
    assert [float(outputs[i].output[0]) for i in (0, 2)] == [0, 20]
    assert model.sizes == [1, 1]  # the expired item never reached the backend


async def test_a_failing_batch_fails_only_its_own_requests():
    model = Model(fail_on=13)
    batcher = await started(model, max_batch_size=2, max_delay_s=0.05)
    bad_batch = batcher.submit([item(13), item(1)], later())  # one batch
    good_batch = batcher.submit([item(2), item(3)], later())  # the next one
    first, second = await results(bad_batch), await results(good_batch)
    after = await results(batcher.submit([item(4)], later()))
    await batcher.stop(TIMEOUT)
    assert model.sizes[:2] == [2, 2]
    assert all(isinstance(o, InferenceFailed) for o in first)
    assert [float(o.output[0]) for o in second] == [20, 30]
    assert float(after[0].output[0]) == 40


async def test_wrong_number_of_outputs_fails_the_batch():
    batcher = await started(lambda batch: np.zeros((len(batch) - 1, 1), np.float32))
    outputs = await results(batcher.submit([item(1), item(2)], later()))
    await batcher.stop(TIMEOUT)
    assert all(isinstance(o, InferenceFailed) and "1 outputs for a batch of 2" in o.message for o in outputs)


@pytest.mark.parametrize("accelerator", [False, True])
async def test_outputs_are_copied_before_the_backend_reuses_its_buffer(accelerator):
    buffer = np.zeros((4, 1), np.float32)

    def reusing(batch: np.ndarray) -> np.ndarray:
        buffer[: len(batch), 0] = batch[:, 0, 0, 0]
        return buffer[: len(batch)]

    batcher = await started(reusing, max_batch_size=1, accelerator=accelerator)
    first = await results(batcher.submit([item(7)], later()))
    await results(batcher.submit([item(8)], later()))
    await batcher.stop(TIMEOUT)
    assert float(first[0].output[0]) == 7


@pytest.mark.parametrize("accelerator", [False, True])
async def test_finish_runs_in_the_worker_thread_on_its_row_before_the_buffer_is_reused(accelerator):
    buffer = np.zeros((4, 1), np.float32)

    def reusing(batch: np.ndarray) -> np.ndarray:
        buffer[: len(batch), 0] = batch[:, 0, 0, 0]
        return buffer[: len(batch)]

    def finish(row: np.ndarray) -> tuple[float, str]:
        return float(row[0]) * 2, threading.current_thread().name

    batcher = await started(reusing, max_batch_size=2, max_delay_s=0.05, accelerator=accelerator)
    both = batcher.submit([item(3), item(4)], later(), [finish, finish])
    outputs = await results(both)
    await results(batcher.submit([item(8)], later(), [finish]))
    await batcher.stop(TIMEOUT)
    assert [o.output[0] for o in outputs] == [6.0, 8.0]  # read before the second call overwrote it
    assert all(o.output[1].startswith("yolor-infer") and o.batch_size == 2 for o in outputs)


async def test_a_failing_finish_fails_only_its_own_image():
    def finish(row: np.ndarray) -> float:
        if row[0] == 20:
            raise ValueError("post-processing broke")
        return float(row[0])

    batcher = await started(Model(), max_batch_size=3, max_delay_s=0.05)
    outputs = await results(batcher.submit([item(1), item(2), item(3)], later(), [finish] * 3))
    await batcher.stop(TIMEOUT)
    assert outputs[0].output == 10 and outputs[2].output == 30
    assert isinstance(outputs[1], ValueError) and outputs[0].batch_size == 3


async def test_finish_functions_must_match_the_images():
    batcher = await started(Model())
    with pytest.raises(ValueError, match="1 finish functions for 2 images"):
        batcher.submit([item(1), item(2)], later(), [float])
    await batcher.stop(TIMEOUT)


async def test_abandoned_items_are_skipped():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=4)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)
        abandoned, kept = batcher.submit([item(1), item(2)], later())
        abandoned.cancel()  # e.g. its request timed out
    finally:
        model.release.set()
    outputs = await results([*running, kept])
    await batcher.stop(TIMEOUT)
    assert model.sizes == [1, 1]
    assert float(outputs[1].output[0]) == 20


async def test_stop_drains_accepted_work_then_refuses():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=2)
    futures = batcher.submit([item(i) for i in range(5)], later())
    await wait_for_event(model.entered)
    stopping = asyncio.create_task(batcher.stop(TIMEOUT))
    await asyncio.sleep(0.01)
    with pytest.raises(ShuttingDown):
        batcher.submit([item(9)], later())
    model.release.set()
    outputs = await results(futures)
    await asyncio.wait_for(stopping, TIMEOUT)
    assert [float(o.output[0]) for o in outputs] == [0, 10, 20, 30, 40]


async def test_stop_after_its_timeout_fails_what_is_left_instead_of_hanging():
    model = Model(gated=True)
    registered = Metrics().for_model("m", 1)
    batcher = await started(model, max_batch_size=1, metrics=registered)
    try:
        futures = batcher.submit([item(i) for i in range(3)], later())
        await wait_for_event(model.entered)
        idle = await asyncio.wait_for(batcher.stop(0.05), TIMEOUT)
        outputs = await results(futures)
        assert idle is False  # the batch is still in the worker thread: the backend must not be closed
        assert batcher.inflight_age() > 0.05
    finally:
        model.release.set()
    assert all(isinstance(o, ShuttingDown) for o in outputs)  # the in-flight one and the queued ones
    metrics = registered.registry
    assert metrics.get_sample_value("yolor_dropped_images_total", {**LABELS, "reason": "shutdown"}) == 3


async def test_stop_waits_for_the_batch_in_the_worker_within_its_timeout():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=1)
    batcher.submit([item(1)], later())
    await wait_for_event(model.entered)
    assert batcher.inflight_age() > 0
    stopping = asyncio.create_task(batcher.stop(TIMEOUT))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the worker, not returning while it runs
    model.release.set()
    assert await asyncio.wait_for(stopping, TIMEOUT) is True
    assert batcher.inflight_age() == 0.0


async def test_abandoned_and_expired_images_are_counted_as_dropped():
    model = Model(gated=True)
    registered = Metrics().for_model("m", 1)
    batcher = await started(model, max_batch_size=1, metrics=registered)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)
        abandoned = batcher.submit([item(1), item(2)], later())
        expired = batcher.submit([item(3)], later(0.01))
        for future in abandoned:
            future.cancel()
        await asyncio.sleep(0.05)
    finally:
        model.release.set()
    await results(running)
    outcome = await results(expired)
    await batcher.stop(TIMEOUT)
    assert isinstance(outcome[0], DeadlineExceeded) and model.sizes == [1]
    metrics = registered.registry
    assert metrics.get_sample_value("yolor_dropped_images_total", {**LABELS, "reason": "abandoned"}) == 2
    assert metrics.get_sample_value("yolor_dropped_images_total", {**LABELS, "reason": "expired"}) == 1


async def test_metrics_are_recorded_around_each_batch():
    metrics = Metrics().for_model("m", 1)
    model = Model(gated=True)
    batcher = DynamicBatcher(model, max_batch_size=2, max_delay_s=0.01, queue_size=8, metrics=metrics)
    await batcher.start()
    try:
        futures = batcher.submit([item(i) for i in range(3)], later())
        await wait_for_event(model.entered)
        assert metrics.registry.get_sample_value("yolor_inflight_batches", LABELS) == 1
        assert metrics.registry.get_sample_value("yolor_queue_depth", LABELS) == 1
    finally:
        model.release.set()
    await results(futures)
    await batcher.stop(TIMEOUT)
    sample = metrics.registry.get_sample_value
    assert sample("yolor_inflight_batches", LABELS) == 0
    assert (sample("yolor_batch_size_count", LABELS), sample("yolor_batch_size_sum", LABELS)) == (2, 3)
    assert sample("yolor_queue_wait_seconds_count", LABELS) == 3
    assert sample("yolor_inference_seconds_count", LABELS) == 2


class TwoGates(Model):
    """Gated; records each call's entry as a threading event (`calls[i]`), and can hold call 2 too."""

    def __init__(self) -> None:
        super().__init__(gated=True)
        self.calls = [threading.Event() for _ in range(4)]
        self.second = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(self.sizes)
        self.calls[n].set()
        if n == 1:
            assert self.second.wait(TIMEOUT)
        return super().__call__(batch)


async def wait_until(condition, timeout_s: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_with_an_accelerator_a_full_batch_queued_meanwhile_starts_without_the_event_loop():
    model = TwoGates()
    model.second.set()
    batcher = await started(model, max_batch_size=2, max_delay_s=0.0, accelerator=True)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.calls[0])
        ready = batcher.submit([item(1), item(2)], later())  # a full batch: formed as the ready batch
        await wait_until(lambda: batcher.queued == 0)
        # The event loop is blocked from here on: only the worker pool can start the ready batch.
        model.release.set()
        assert model.calls[1].wait(TIMEOUT)
    finally:
        model.release.set()
    outputs = await results(running + ready)
    assert await batcher.stop(TIMEOUT)
    assert model.sizes == [1, 2]
    assert [float(o.output[0]) for o in outputs] == [0, 10, 20]
    assert [o.batch_size for o in outputs] == [1, 2, 2]


async def test_no_ready_batch_is_formed_before_a_full_batch_is_queued():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=4, max_delay_s=0.0, accelerator=True)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)
        first = batcher.submit([item(1), item(2)], later())
        await asyncio.sleep(0.05)
        assert batcher.queued == 2  # left to fill up while the worker is busy
        second = batcher.submit([item(3), item(4)], later())
        await wait_until(lambda: batcher.queued == 0)  # now full: formed
    finally:
        model.release.set()
    outputs = await results(running + first + second)
    assert await batcher.stop(TIMEOUT)
    assert model.sizes == [1, 4]
    assert [float(o.output[0]) for o in outputs] == [0, 10, 20, 30, 40]


async def test_images_of_the_ready_batch_count_against_the_queue_bound():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=2, queue_size=3, accelerator=True)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)
        ready = batcher.submit([item(1), item(2)], later())
        await wait_until(lambda: batcher.queued == 0)
        with pytest.raises(Overloaded, match=r"2/3 images waiting"):
            batcher.submit([item(3), item(4)], later())
        queued = batcher.submit([item(5)], later())
    finally:
        model.release.set()
    outputs = await results(running + ready + queued)
    assert await batcher.stop(TIMEOUT)
    assert [float(o.output[0]) for o in outputs] == [0, 10, 20, 50]


async def test_images_of_the_ready_batch_abandoned_or_expired_while_it_waits_are_not_run():
    model = TwoGates()
    registered = Metrics().for_model("m", 1)
    batcher = await started(model, max_batch_size=3, max_delay_s=0.0, accelerator=True, metrics=registered)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.calls[0])
        expiring = batcher.submit([item(1)], later(0.05))
        abandoned, kept = batcher.submit([item(2), item(3)], later())
        await wait_until(lambda: batcher.queued == 0)  # the ready batch holds all three
        abandoned.cancel()
        await asyncio.sleep(0.1)  # item 1's deadline passes while the ready batch waits
    finally:
        model.release.set()
        model.second.set()
    outputs = await results([*running, *expiring, kept])
    assert await batcher.stop(TIMEOUT)
    assert model.sizes == [1, 1]  # only item 3 ran in the second call
    assert isinstance(outputs[1], DeadlineExceeded)
    assert float(outputs[2].output[0]) == 30 and outputs[2].batch_size == 1
    sample = registered.registry.get_sample_value
    assert sample("yolor_dropped_images_total", {**LABELS, "reason": "abandoned"}) == 1
    assert sample("yolor_dropped_images_total", {**LABELS, "reason": "expired"}) == 1
    assert (sample("yolor_batch_size_count", LABELS), sample("yolor_batch_size_sum", LABELS)) == (2, 2)


@pytest.mark.parametrize("accelerator", [True, False])
async def test_with_an_accelerator_the_next_batch_runs_while_the_last_one_is_post_processed(accelerator):
    """An accelerator is not left idle while the CPU post-processes: its turn ends once the outputs
    are copied, and the ready batch, waiting in a thread of its own, goes in. On the CPU the
    post-processing comes first (beside the next batch it would only contend for the cores)."""
    second_call = threading.Event()
    model = Model()

    def recording(batch: np.ndarray) -> np.ndarray:
        if model.sizes:
            second_call.set()
        return model(batch)

    def slow_finish(row: np.ndarray) -> bool:  # True once the next batch has entered the backend
        return second_call.wait(TIMEOUT if accelerator else 0.2)

    batcher = await started(recording, max_batch_size=1, max_delay_s=0.0, accelerator=accelerator)
    first = batcher.submit([item(1)], later(), [slow_finish])
    second = batcher.submit([item(2)], later())
    outputs = await results(first + second)
    assert await batcher.stop(TIMEOUT)
    assert outputs[0].output is accelerator and float(outputs[1].output[0]) == 20
    assert model.sizes == [1, 1]


async def test_batches_enter_the_backend_in_the_order_they_were_formed(monkeypatch):
    """The ready batch waits for its turn: it does not overtake an earlier batch whose thread was
    slower to get there (here: slower to stack its images)."""
    seen: list[float] = []
    stack = np.stack

    def slow_for_the_first(arrays, *args, **kwargs):
        if float(arrays[0][0, 0, 0]) == 1:
            time.sleep(0.2)
        return stack(arrays, *args, **kwargs)

    def recording(batch: np.ndarray) -> np.ndarray:
        seen.extend(float(v) for v in batch[:, 0, 0, 0])
        return batch[:, 0, 0, :1] * 10

    monkeypatch.setattr(np, "stack", slow_for_the_first)
    batcher = await started(recording, max_batch_size=1, max_delay_s=0.0, accelerator=True)
    first = batcher.submit([item(1)], later())
    await asyncio.sleep(0.05)  # formed, its thread stacking
    second = batcher.submit([item(2)], later())  # formed as the ready batch
    outputs = await results(first + second)
    assert await batcher.stop(TIMEOUT)
    assert seen == [1, 2]
    assert [o.batch_id for o in outputs] == [1, 2]


async def test_with_an_accelerator_an_output_of_its_own_is_not_copied_again():
    returned: list[np.ndarray] = []

    def owning(batch: np.ndarray) -> np.ndarray:
        returned.append(batch[:, 0, 0, :1] * 10)  # a new array each call, the caller's to keep
        return returned[-1]

    batcher = await started(owning, max_batch_size=1, accelerator=True)
    (output,) = await results(batcher.submit([item(3)], later()))
    assert await batcher.stop(TIMEOUT)
    assert float(output.output[0]) == 30 and np.shares_memory(output.output, returned[0])


async def test_on_the_cpu_a_batch_is_formed_only_once_a_worker_is_free():
    model = Model(gated=True)
    batcher = await started(model, max_batch_size=2, max_delay_s=0.0)
    try:
        running = batcher.submit([item(0)], later())
        await wait_for_event(model.entered)
        queued = batcher.submit([item(1), item(2)], later())  # a full batch, every worker busy
        await asyncio.sleep(0.05)
        assert batcher.queued == 2 and batcher.waiting == 2
    finally:
        model.release.set()
    outputs = await results(running + queued)
    assert await batcher.stop(TIMEOUT)
    assert model.sizes == [1, 2] and [float(o.output[0]) for o in outputs] == [0, 10, 20]


@pytest.mark.parametrize("accelerator", [False, True])
async def test_a_batch_that_cannot_be_stacked_fails_alone_and_the_next_one_runs(accelerator):
    batcher = await started(Model(), max_batch_size=2, max_delay_s=0.05, accelerator=accelerator)
    odd = np.zeros((1, 3, 3), np.float32)  # not the shape of the other image of its batch
    failed = await results(batcher.submit([item(1), odd], later()))
    after = await results(batcher.submit([item(2)], later()))
    assert await batcher.stop(TIMEOUT)
    assert all(isinstance(o, InferenceFailed) for o in failed)
    assert float(after[0].output[0]) == 20
