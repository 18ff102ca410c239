"""Graceful shutdown: accepted requests are answered, new ones are refused, the backend is released."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.app import Gate, assert_error, encode, fake_app, files, red_scored, solid, wait_until

pytestmark = [pytest.mark.api, pytest.mark.anyio]


async def test_shutdown_finishes_accepted_requests_and_refuses_new_ones(tmp_path):
    gate = Gate(red_scored)
    app, made = fake_app(tmp_path, gate, warmup=False, max_batch_size=1)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            reds = [30, 60, 90]
            accepted = [
                asyncio.create_task(
                    client.post("/detect", files=files(encode(solid(64, 64, (r, 0, 0)))), params={"conf": 0})
                )
                for r in reds
            ]
            await wait_until(gate.entered.is_set, "a batch is in flight")
            stopping = asyncio.create_task(lifespan.__aexit__(None, None, None))
            await wait_until(lambda: app.state.service.readiness.shutting_down, "shutdown started")
            late = await client.post("/detect", files=files(encode(solid(8, 8, (0, 0, 0)))))
            readiness = await client.get("/readyz")
            gate.release.set()
            answered = await asyncio.wait_for(asyncio.gather(*accepted), 5)
            await asyncio.wait_for(stopping, 5)
    finally:
        gate.release.set()
    assert [r.status_code for r in answered] == [200, 200, 200]
    scores = [r.json()["results"][0]["detections"][0]["score"] for r in answered]
    assert scores == pytest.approx([r / 255 for r in reds], abs=1e-5)
    assert_error(late, 503, "shutting_down")
    assert late.headers["retry-after"] == "1"
    assert_error(readiness, 503, "shutting_down")
    assert made["backend"].closed
