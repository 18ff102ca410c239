"""A closed-loop HTTP load generator: `concurrency` clients, each sending its next image as soon as
its previous answer arrives (asyncio + aiohttp, one keep-alive connection per client: a fraction of
httpx's CPU per request, which matters because the generator shares the server's CPUs; measured in
docs/benchmarks.md, "What changed the served numbers").

Each request is `POST /detect` with one JPEG as multipart form field `image`, the body encoded once
per image up front so the generator spends its CPU on HTTP, not on re-encoding. A level runs for
`warmup_s` unrecorded, then for `seconds` recorded: a request counts when it completes inside the
window. `on_window` is awaited at the window's start and end (the server's counters are read there).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from bench.stats import process_cpu_seconds

STAGES = ("preprocess", "queue", "inference", "postprocess")


def multipart_body(jpeg: bytes, field_name: str = "image") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload of one JPEG."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="image.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + jpeg + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Window:
    """What one level recorded."""

    concurrency: int
    seconds: float = 0.0  # measured window length
    latencies: list[float] = field(default_factory=list)  # of successful requests, seconds
    stages_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    server_total_ms: list[float] = field(default_factory=list)  # the server's own "total"
    errors: Counter[str] = field(default_factory=Counter)  # "503", "ReadTimeout", ...
    client_cpu_s: float = 0.0  # this process's CPU time in the window

    @property
    def ok(self) -> int:
        return len(self.latencies)


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    jpegs: Sequence[bytes],
    *,
    concurrency: int,
    seconds: float,
    warmup_s: float,
    on_window: Callable[[str], Awaitable[None]] | None = None,
    on_response: Callable[[], None] | None = None,
    encode: Callable[[bytes], tuple[bytes, str]] = multipart_body,
) -> Window:
    """Run one level against `url` (the detect endpoint); client i sends images i, i + c, i + 2c, ...
    `encode` makes a request body of each JPEG (default: `/detect`'s multipart upload)."""
    bodies = [encode(j) for j in jpegs]
    window = Window(concurrency)
    recording = False
    stop = asyncio.Event()

    async def one_client(index: int) -> None:
        k = index
        while not stop.is_set():
            content, content_type = bodies[k % len(bodies)]
            k += concurrency
            start = time.perf_counter()
            try:
                async with session.post(
                    url, data=content, headers={"Content-Type": content_type}
                ) as response:
                    status, payload = response.status, await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                if recording:
                    window.errors[type(e).__name__] += 1
                await asyncio.sleep(0.05)  # a refused connection would otherwise spin
                continue
            elapsed = time.perf_counter() - start
            if not recording:
                continue
            if status != 200:
                window.errors[str(status)] += 1
                continue
            window.latencies.append(elapsed)
            timing = json.loads(payload).get("timing_ms", {})
            for stage in STAGES:
                window.stages_ms[stage].append(float(timing.get(stage, 0.0)))
            window.server_total_ms.append(float(timing.get("total", 0.0)))
            if on_response is not None:
                on_response()

    clients = [asyncio.create_task(one_client(i)) for i in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        if on_window is not None:
            await on_window("start")
        cpu0, t0 = process_cpu_seconds(), time.perf_counter()
        recording = True
        await asyncio.sleep(seconds)
        recording = False
        window.seconds, window.client_cpu_s = time.perf_counter() - t0, process_cpu_seconds() - cpu0
        if on_window is not None:
            await on_window("end")
        stop.set()
        await asyncio.gather(*clients)
    finally:
        stop.set()
        for task in clients:
            task.cancel()
    return window
