"""`yolor bench serve`: the whole service over HTTP under a closed-loop load, per concurrency.

For each concurrency (1, 2, 4, ... 4 x the server's max batch): requests/s, images/s, client-side
latency percentiles, errors by status, the mean time per server stage (from each response's
`timing_ms`; "other" is the client's latency minus the server's own total: HTTP, JSON and the event
loop), the batch sizes the server formed and its CPU time per image (both from `/metrics`), and the
load generator's own CPU time per image (it shares the machine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import aiohttp
import numpy as np

from bench.load import STAGES, Window, closed_loop
from bench.scrape import ServerCounters
from bench.stats import Latency, doubling, rate

Progress = Callable[[int, float], None]  # (concurrency, seconds of its window so far)


def concurrency_levels(max_batch: int, up_to: int | None = None) -> list[int]:
    """1, 2, 4, ... up to `up_to` (default 4 x max batch), which is included."""
    return doubling(up_to if up_to is not None else 4 * max_batch)


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int  # answered 200 inside the window
    seconds: float
    requests_per_s: float
    images_per_s: float
    latency: Latency | None  # client-side, of the successful requests
    errors: dict[str, int]  # status code or exception name -> count
    stages_ms: dict[str, float]  # mean per request: preprocess, queue, inference, postprocess, other
    mean_batch: float | None  # from the server's yolor_batch_size histogram
    batch_histogram: dict[str, int]
    server_cpu_ms_per_image: float | None
    client_cpu_ms_per_image: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency": asdict(self.latency) if self.latency else None}


def summarise(window: Window, server: ServerCounters) -> LevelResult:
    """One level's numbers from what the client recorded and the server's counters over the window."""
    ok, seconds = window.ok, window.seconds
    images = server.images if server.images > 0 else float(ok)
    stages = {s: float(np.mean(window.stages_ms[s])) if ok else 0.0 for s in STAGES}
    if ok:
        other = np.asarray(window.latencies) * 1000 - np.asarray(window.server_total_ms)
        stages["other"] = float(np.mean(other))
    per_image = 1000 / images if images else None
    return LevelResult(
        concurrency=window.concurrency,
        requests=ok,
        seconds=seconds,
        requests_per_s=ok / seconds if seconds else 0.0,
        images_per_s=ok / seconds if seconds else 0.0,  # one image per request
        latency=Latency.of(window.latencies) if ok else None,
        errors=dict(sorted(window.errors.items())),
        stages_ms=stages,
        mean_batch=server.mean_batch,
        batch_histogram=server.batch_histogram(),
        server_cpu_ms_per_image=server.cpu_seconds * per_image
        if server.cpu_seconds is not None and per_image
        else None,
        client_cpu_ms_per_image=window.client_cpu_s * per_image if per_image else None,
    )


@dataclass(frozen=True)
class ServedModel:
    """What `GET /model` says is served."""

    arch: str
    input_size: int
    backend: str
    precision: str
    device: str
    max_batch_size: int
    max_delay_ms: float

    @classmethod
    def of(cls, info: dict[str, Any]) -> ServedModel:
        return cls(**{f.name: info[f.name] for f in fields(cls)})


async def served_model(session: aiohttp.ClientSession, base_url: str) -> ServedModel:
    async with session.get(f"{base_url}/model", raise_for_status=True) as response:
        return ServedModel.of(await response.json())


async def sweep(
    base_url: str,
    jpegs: Sequence[bytes],
    levels: Sequence[int],
    *,
    seconds: float,
    warmup_s: float,
    headers: dict[str, str] | None = None,
    progress: Progress | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
) -> list[LevelResult]:
    """Each level in turn against `base_url` (`/detect`, `/metrics` read at each window's edges)."""
    connector = aiohttp.TCPConnector(limit=max(levels) + 2)
    timeout = aiohttp.ClientTimeout(total=60.0, connect=10.0)
    results = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        for level in levels:
            counters: dict[str, ServerCounters] = {}

            async def read_counters(edge: str) -> None:
                async with session.get(f"{base_url}/metrics", raise_for_status=True) as response:
                    counters[edge] = ServerCounters.parse(await response.text())  # noqa: B023

            window_task = asyncio.create_task(
                closed_loop(
                    session,
                    f"{base_url}/detect",
                    jpegs,
                    concurrency=level,
                    seconds=seconds,
                    warmup_s=warmup_s,
                    on_window=read_counters,
                )
            )
            if progress is not None:
                await _report_progress(window_task, level, warmup_s, progress)
            window = await window_task
            result = summarise(window, counters["end"].minus(counters["start"]))
            results.append(result)
            if on_level is not None:
                on_level(result)
    return results


async def _report_progress(
    task: asyncio.Task[Window], level: int, warmup_s: float, progress: Progress
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        progress(level, max(0.0, loop.time() - start - warmup_s))


def markdown_table(results: Sequence[LevelResult]) -> str:
    lines = [
        "| concurrency | images/s | p50 ms | p90 ms | p99 ms | mean batch | pre ms | queue ms | infer ms "
        "| post ms | other ms | server CPU ms/img | client CPU ms/img | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lat, st = r.latency, r.stages_ms
        p = (f"{lat.p50_ms:.1f} | {lat.p90_ms:.1f} | {lat.p99_ms:.1f}") if lat else "- | - | -"
        errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "0"
        lines.append(
            f"| {r.concurrency} | {rate(r.images_per_s)} | {p} | {_num(r.mean_batch, 2)} | "
            f"{st.get('preprocess', 0):.1f} | {st.get('queue', 0):.1f} | {st.get('inference', 0):.1f} | "
            f"{st.get('postprocess', 0):.1f} | {st.get('other', 0):.1f} | "
            f"{_num(r.server_cpu_ms_per_image, 2)} | {_num(r.client_cpu_ms_per_image, 2)} | {errors} |"
        )
    return "\n".join(lines) + "\n"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
