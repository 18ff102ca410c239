"""The open loop and the burst against a small aiohttp server whose behaviour is known exactly."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from bench.rate_load import burst, open_loop

pytestmark = pytest.mark.unit

BODY = (b"x", "application/octet-stream")


async def _serve(handler, run):
    app = web.Application()
    app.router.add_post("/detect", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await run(session, f"http://127.0.0.1:{port}/detect")
    finally:
        await runner.cleanup()


@pytest.mark.slow
def test_the_open_loop_sends_on_schedule_and_counts_latency_from_when_each_was_due():
    """A server answering one request at a time in 50 ms, offered 40/s (twice what it can do): a
    closed loop would see 50 ms; latency counted from the due time grows as the backlog does."""
    lock = asyncio.Lock()

    async def one_at_a_time(request):
        async with lock:
            await asyncio.sleep(0.05)
        return web.Response(text="{}")

    async def run(session, url):
        return await open_loop(session, url, [BODY], rate=40, seconds=1.0, warmup_s=0.0)

    window = asyncio.run(_serve(one_at_a_time, run))
    assert window.sent == 40 and window.ok == 40 and not window.errors
    latencies = sorted(window.latencies)
    assert latencies[0] >= 0.05
    assert latencies[-1] >= 40 * 0.05 - 1.0 - 0.1  # the last waited behind ~all the others


def test_the_open_loop_counts_errors_by_status():
    async def half_fail(request):
        half_fail.n += 1
        return web.Response(status=500 if half_fail.n % 2 else 200)

    half_fail.n = 0

    async def run(session, url):
        return await open_loop(session, url, [BODY], rate=50, seconds=0.4, warmup_s=0.2)

    window = asyncio.run(_serve(half_fail, run))
    assert window.sent == 20 and window.ok + window.errors["500"] == 20 and window.ok == 10


@pytest.mark.slow  # a burst against a real server, then its recovery
def test_a_burst_counts_answered_shed_and_failed_and_the_recovery():
    """The server takes 10 requests at a time: the rest of the burst are refused (503), except
    every 7th which hangs past the client's timeout. After the burst it answers at once again."""
    state = {"inside": 0, "n": 0}

    async def bounded(request):
        state["n"] += 1
        if state["n"] > 10 and state["n"] <= 110 and state["n"] % 7 == 0:
            await asyncio.sleep(2.0)  # past the 0.5 s timeout
        if state["inside"] >= 10:
            return web.Response(status=503)
        state["inside"] += 1
        try:
            await asyncio.sleep(0.1)
        finally:
            state["inside"] -= 1
        return web.Response(text="{}")

    async def run(session, url):
        return await burst(session, url, [BODY], size=100, timeout_s=0.5, probes=10)

    result = asyncio.run(_serve(bounded, run))
    hung = sum(1 for n in range(11, 111) if n % 7 == 0)
    assert result.answered + result.shed + result.failed == 100
    assert result.failed == hung and result.failures == {"TimeoutError": hung}
    assert result.answered == 10 and result.shed == 100 - 10 - hung
    assert 100 <= result.baseline_ms < 300
    assert result.recovery_s is not None and result.recovery_s < 2.0
