"""One `yolor predict` run: the sources through an engine, in their order, into the output folder.

Images run `concurrency` at a time (enough in flight for the batcher to fill its batches), their
results written in source order as the oldest one finishes; a video runs alone, in its place in the
order, its frames written as they come (the detector keeps several batches of one clip in flight).
A source that fails is reported (a line on stderr, a line in errors.jsonl) and skipped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from predict.engine import Engine, ItemError, Record
from predict.sources import Problem, Source
from predict.writers import ErrorLog, FormatWriter, PredictionsLog, format_writers, source_of

log = logging.getLogger("yolor")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class RunOptions:
    out: Path
    formats: tuple[str, ...] = ()
    concurrency: int = 8
    vid_stride: int = 1
    track: bool = False
    save_annotated: bool = False
    resume: bool = False
    quiet: bool = False


@dataclass
class RunSummary:
    done: int = 0  # sources completed by this run
    resumed: int = 0  # already complete in predictions.jsonl
    failed: int = 0  # sources (and specs that named nothing) reported in errors.jsonl
    frames: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


class _Output:
    """Where results and failures go: predictions.jsonl, the format writers, errors.jsonl, the bar."""

    def __init__(self, engine: Engine, options: RunOptions, total: int, summary: RunSummary) -> None:
        self.engine, self.options, self.summary = engine, options, summary
        self.predictions = PredictionsLog(options.out, resume=options.resume)
        self.errors = ErrorLog(options.out)
        self.writers: list[FormatWriter] = format_writers(options.out, list(options.formats))
        self.started = time.monotonic()
        # disable=None: no bar unless stderr is a terminal (a log file would get every refresh)
        self.bar = tqdm(total=total, unit="item", disable=True if options.quiet else None, leave=False)

    def replay(self, known: dict[str, Source]) -> set[str]:
        """Feed the resumed lines to the format writers; the keys of the sources they complete."""
        for line in self.predictions.kept:
            record = {k: v for k, v in line.items() if k != "source"}
            for writer in self.writers:
                writer.add(source_of(line["source"], known), record)
        return self.predictions.done

    def write(self, source: Source, record: Record) -> None:
        self.predictions.write(source, record)
        for writer in self.writers:
            writer.add(source, record)
        if "frame" in record:
            self.summary.frames += 1
            rate = self.summary.frames / max(1e-9, time.monotonic() - self.started)
            self.bar.set_postfix_str(f"{self.summary.frames} frames, {rate:.1f} frames/s", refresh=False)
            self.bar.refresh()

    def finished(self, source: Source) -> None:
        self.summary.done += 1
        self.bar.update(1)

    def fail(self, key: str, code: str, message: str, *, counted: bool = True) -> None:
        log.error("%s: %s: %s", key, code, message)
        self.errors.write(key, code, message)
        self.summary.failed += 1
        self.summary.failures.append(key)
        if counted:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        self.predictions.close()
        self.errors.close()
        for writer in self.writers:
            writer.close(self.engine.class_names, self.engine.model_version)


async def run(
    sources: list[Source], engine: Engine, options: RunOptions, problems: Iterable[Problem] = ()
) -> RunSummary:
    """Predict every source not already complete in OUT/predictions.jsonl (with `resume`)."""
    options.out.mkdir(parents=True, exist_ok=True)
    summary = RunSummary()
    output = _Output(engine, options, 0, summary)
    try:
        for problem in problems:
            output.fail(problem.spec, "not_found", problem.message, counted=False)
        done = output.replay({s.key: s for s in sources})
        todo = [s for s in sources if s.key not in done]
        summary.resumed = len(sources) - len(todo)
        if summary.resumed:
            log.info(
                "%d of %d sources already done in %s", summary.resumed, len(sources), output.predictions.path
            )
        output.bar.reset(total=len(todo))
        for group in _groups(todo):
            if group[0].is_video:
                await _video(group[0], engine, options, output)
            else:
                await _images(group, engine, options, output)
    finally:
        output.close()
        summary.seconds = time.monotonic() - output.started
    return summary


def _groups(sources: list[Source]) -> list[list[Source]]:
    """Runs of consecutive images, and each video alone, in order."""
    groups: list[list[Source]] = []
    for source in sources:
        if source.is_video or not groups or groups[-1][0].is_video:
            groups.append([source])
        else:
            groups[-1].append(source)
    return groups


async def _images(sources: list[Source], engine: Engine, options: RunOptions, output: _Output) -> None:
    annotated = options.out / "annotated"

    async def predict(source: Source) -> Record:
        try:
            data = await asyncio.to_thread(source.path.read_bytes)
        except OSError as e:
            raise ItemError("unreadable", str(e)) from None
        record = await engine.image(data)
        if options.save_annotated:
            from predict.annotate import save_annotated

            target = annotated / source.name.with_suffix(".jpg")
            await asyncio.to_thread(save_annotated, target, data, record, engine.class_names)
        return record

    async for source, result in in_order(sources, predict, options.concurrency):
        if isinstance(result, ItemError):
            output.fail(source.key, result.code, result.message)
        else:
            output.write(source, result)
            output.finished(source)


async def _video(source: Source, engine: Engine, options: RunOptions, output: _Output) -> None:
    frames: list[Record] = []  # kept for --save-annotated (their detections only)
    try:
        async for record in engine.video(source.path, options.vid_stride, options.track):
            output.write(source, record)
            if options.save_annotated and "frame" in record:
                frames.append(record)
    except ItemError as e:
        output.fail(source.key, e.code, e.message)
        return
    if options.save_annotated and frames:
        from predict.annotate import save_annotated_video

        target = options.out / "annotated" / source.name
        names, stride = engine.class_names, options.vid_stride
        await asyncio.to_thread(save_annotated_video, target, source.path, frames, names, stride)
    output.finished(source)


async def in_order(
    items: list[T], work: Callable[[T], Awaitable[R]], concurrency: int
) -> AsyncIterator[tuple[T, R | ItemError]]:
    """Each item with `work(item)`'s result (or its ItemError), in the items' order, `concurrency`
    works running at once; up to twice as many started ahead, so the oldest one being slow does
    not leave the others idle."""
    running = asyncio.Semaphore(concurrency)

    async def guarded(item: T) -> R:
        async with running:
            return await work(item)

    window: collections.deque[tuple[T, asyncio.Task[R]]] = collections.deque()
    started = 0
    try:
        while True:
            while len(window) < 2 * concurrency and started < len(items):
                item = items[started]
                window.append((item, asyncio.ensure_future(guarded(item))))
                started += 1
            if not window:
                return
            item, task = window.popleft()
            result: R | ItemError
            try:
                result = await task
            except ItemError as e:
                result = e
            yield item, result
    finally:
        for _, task in window:
            task.cancel()
        await asyncio.gather(*(task for _, task in window), return_exceptions=True)
