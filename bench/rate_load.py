"""Load that does not wait for answers: an open loop at a fixed rate, and a burst.

- `open_loop`: request i is due at `start + i / rate` and sent then, whatever is still in flight;
  its latency counts from when it was due, not from when it was sent (a client that fell behind
  does not hide the server's slowness: no coordinated omission).
- `burst`: `size` requests at once (an overload: more than the server can queue or answer in the
  client's `timeout_s`), each answered (200), shed (429 or 503: a clear refusal the client can
  retry) or failed (any other status, a reset connection, a timeout). Beside it one probe at a time
  measures the recovery: the time from the burst until a probe is answered within twice the latency
  the probe had before the burst.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

SHED = frozenset({429, 503})

Body = tuple[bytes, str]  # content, content type


async def _post(session: aiohttp.ClientSession, url: str, body: Body, timeout_s: float | None = None) -> str:
    """ "200", another status code, or the exception's name."""
    content, content_type = body
    headers = {"Content-Type": content_type}
    timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
    try:
        async with session.post(url, data=content, headers=headers, timeout=timeout) as r:
            await r.read()
            return str(r.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return type(e).__name__


@dataclass
class OpenWindow:
    rate: float  # offered, requests/s
    sent: int = 0
    latencies: list[float] = field(default_factory=list)  # of the 200s, from when each was due
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[Body],
    *,
    rate: float,
    seconds: float,
    warmup_s: float = 1.0,
) -> OpenWindow:
    """Send at `rate` for `warmup_s` (not recorded), then for `seconds` (recorded); wait for all."""
    window = OpenWindow(rate)
    loop = asyncio.get_running_loop()
    start = loop.time()
    unrecorded, total = round(warmup_s * rate), round((warmup_s + seconds) * rate)
    tasks = []

    async def one(due: float, body: Body, record: bool) -> None:
        status = await _post(session, url, body)
        if not record:
            return
        if status == "200":
            window.latencies.append(loop.time() - due)
        else:
            window.errors[status] += 1

    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        record = i >= unrecorded
        window.sent += record
        tasks.append(asyncio.create_task(one(due, bodies[i % len(bodies)], record)))
    await asyncio.gather(*tasks)
    window.seconds = seconds
    return window


@dataclass(frozen=True)
class BurstResult:
    size: int
    answered: int  # 200
    shed: int  # 429 / 503
    failed: int  # everything else
    failures: dict[str, int]  # what failed, by status or exception
    seconds: float  # until the last of the burst was settled
    baseline_ms: float  # a probe's latency before the burst (median of a few)
    recovery_s: float | None  # until a probe sent after the burst was answered within 2 x baseline


async def burst(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[Body],
    *,
    size: int,
    timeout_s: float,
    probes: int = 10,
    recovery_limit_s: float = 120.0,
) -> BurstResult:
    """`size` requests at once, each with a `timeout_s` deadline, and the probe beside them."""
    baseline = []
    for k in range(probes):
        t = time.perf_counter()
        if await _post(session, url, bodies[k % len(bodies)], timeout_s) == "200":
            baseline.append(time.perf_counter() - t)
    baseline_s = sorted(baseline)[len(baseline) // 2] if baseline else timeout_s
    start = time.perf_counter()
    tasks = [
        asyncio.create_task(_post(session, url, bodies[i % len(bodies)], timeout_s)) for i in range(size)
    ]
    settled = asyncio.ensure_future(asyncio.gather(*tasks))
    recovery = None
    k = 0
    while time.perf_counter() - start < recovery_limit_s:
        await asyncio.sleep(0.05)
        sent = time.perf_counter()
        status = await _post(session, url, bodies[k % len(bodies)], timeout_s)
        k += 1
        if status == "200" and time.perf_counter() - sent <= 2 * baseline_s:
            recovery = sent - start
            break
    statuses = Counter(await settled)
    seconds = time.perf_counter() - start
    answered = statuses.pop("200", 0)
    shed = sum(statuses.pop(str(code), 0) for code in SHED)
    return BurstResult(
        size=size,
        answered=answered,
        shed=shed,
        failed=sum(statuses.values()),
        failures=dict(statuses),
        seconds=seconds,
        baseline_ms=baseline_s * 1000,
        recovery_s=recovery,
    )
