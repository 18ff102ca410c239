"""The backend's life in the app: never released under a running batch, a hung batch turns the service
not ready, and a client that disconnects gives its queued images up."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.backends import FakeBackend
from service.http.app import create_app
from service.manifest import ModelManifest
from service.settings import Settings
from tests.support.app import (
    WAIT_S,
    Gate,
    assert_error,
    encode,
    fake_app,
    files,
    red_scored,
    serving,
    solid,
    wait_until,
)
from tests.support.model_files import write_model_dir

pytestmark = [pytest.mark.api]

MODEL = {"model": "yolor", "version": "1"}  # the labels of what the one model records


class Recorder(FakeBackend):
    """A fake whose batches take `hold_s` (or until `release` is set) and which records, without the
    base class's lock, whether `close()` ran while a batch was inside `infer`."""

    def __init__(self, manifest: ModelManifest, hold_s: float) -> None:
        out = tuple(int(d) if isinstance(d, int) else None for d in manifest.output.shape[1:])
        super().__init__(red_scored, input_size=manifest.input_size, output_shape=out, head=manifest.head)
        self.hold_s = hold_s
        self.inside, self.release = threading.Event(), threading.Event()
        self.events: list[str] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:  # no lock: the app alone must get the order right
        self.inside.set()
        self.events.append("infer entered")
        self.release.wait(self.hold_s)
        self.events.append("infer returned")
        self.inside.clear()
        return red_scored(batch)

    def close(self, timeout_s: float | None = None) -> bool:
        self.events.append("close while inside" if self.inside.is_set() else "close")
        return True


def recorder_app(tmp_path: Path, hold_s: float, **settings: object) -> tuple[object, dict[str, Recorder]]:
    write_model_dir(tmp_path)
    made: dict[str, Recorder] = {}

    def factory(s: Settings, manifest: ModelManifest) -> Recorder:
        made["backend"] = Recorder(manifest, hold_s)
        return made["backend"]

    app = create_app(
        Settings(model_dir=tmp_path, warmup=False, max_batch_size=1, **settings), backend_factory=factory
    )
    return app, made


def _image(red: int = 100) -> list[tuple[str, tuple[str, bytes, str]]]:
    return files(encode(solid(64, 64, (red, 0, 0))))


async def _shutdown_with_a_batch_in_flight(app, made) -> tuple[httpx.Response, float]:
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await wait_until(lambda: "backend" in made, "the backend was built")
        request = asyncio.create_task(client.post("/detect", files=_image()))
        await wait_until(made["backend"].inside.is_set, "a batch is in the backend")
        started = time.monotonic()
        await asyncio.wait_for(lifespan.__aexit__(None, None, None), WAIT_S * 2)
        stop_s = time.monotonic() - started
        return await request, stop_s


@pytest.mark.anyio
async def test_a_slow_batch_is_waited_for_before_the_backend_is_closed(tmp_path):
    # The request times out (1 s) while its batch is still running (1.4 s): shutdown must still
    # wait for the batch before closing the backend (the old code closed it right away).
    app, made = recorder_app(tmp_path, hold_s=1.4, request_timeout_s=1.0)
    response, _ = await _shutdown_with_a_batch_in_flight(app, made)
    assert_error(response, 504, "deadline_exceeded")
    assert made["backend"].events == ["infer entered", "infer returned", "close"]


@pytest.mark.anyio
async def test_a_batch_that_never_returns_is_never_released_and_stop_is_bounded(tmp_path, caplog):
    app, made = recorder_app(tmp_path, hold_s=30.0, request_timeout_s=0.5)
    try:
        with caplog.at_level(logging.ERROR, logger="service"):
            response, stop_s = await _shutdown_with_a_batch_in_flight(app, made)
    finally:
        made["backend"].release.set()
    assert_error(response, 504, "deadline_exceeded")
    assert stop_s < 3.0  # request drain 0.5 s + batcher stop 0.5 s, plus slack
    assert "close" not in made["backend"].events and "close while inside" not in made["backend"].events
    assert "without releasing the backend" in caplog.text


@pytest.mark.anyio
async def test_the_watchdog_turns_a_hung_backend_not_ready_and_back(tmp_path):
    app, made = recorder_app(tmp_path, hold_s=30.0, request_timeout_s=1.0, watchdog_s=0.2)
    metrics = app.state.service.metrics.registry
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/readyz")).status_code == 200
            stuck = asyncio.create_task(client.post("/detect", files=_image()))
            await wait_until(lambda: app.state.service.readiness.stalled != "", "the watchdog saw the stall")
            message = assert_error(await client.get("/readyz"), 503, "not_ready")
            assert "in the backend for" in message and "watchdog limit 0.2 s" in message
            assert metrics.get_sample_value("yolor_backend_stalled") == 1
            assert metrics.get_sample_value("yolor_ready") == 0
            assert metrics.get_sample_value("yolor_inflight_batch_age_seconds") > 0.2
            refused = await client.post("/detect", files=_image())  # not queued behind the hung batch
            assert_error(refused, 503, "not_ready")
            assert_error(await stuck, 504, "deadline_exceeded")
            made["backend"].release.set()
            await wait_until(lambda: app.state.service.readiness.stalled == "", "the stall cleared")
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/detect", files=_image())).status_code == 200
    assert metrics.get_sample_value("yolor_backend_stalled") == 0
    assert metrics.get_sample_value("yolor_backend_stalls_total") == 1


def _raw_request(base_url: str, red: int) -> tuple[socket.socket, bytes]:
    request = httpx.Request("POST", f"{base_url}/detect", files=_image(red), params={"conf": 0})
    body = request.read()
    host, port = request.url.host, request.url.port
    head = f"POST {request.url.raw_path.decode()} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += f"Content-Type: {request.headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock = socket.create_connection((host, port), timeout=WAIT_S)
    return sock, head.encode() + body


def test_a_client_that_disconnects_gives_up_its_queued_images(tmp_path):
    seen: list[int] = []
    gate = Gate(red_scored)

    def model(batch: np.ndarray) -> np.ndarray:
        seen.append(round(float(batch[0, 0].mean()) * 255))
        return gate(batch)

    app, made = fake_app(tmp_path, model, warmup=False, max_batch_size=1)
    metrics = app.state.service.metrics.registry

    def wait_for(condition, what: str) -> None:
        give_up = time.monotonic() + WAIT_S
        while not condition():
            assert time.monotonic() < give_up, f"timed out waiting: {what}"
            time.sleep(0.005)

    with serving(app) as url:
        first: dict[str, httpx.Response] = {}
        holder = threading.Thread(
            target=lambda: first.update(r=httpx.post(f"{url}/detect", files=_image(30), timeout=WAIT_S))
        )
        holder.start()
        try:
            wait_for(gate.entered.is_set, "the first image is in the backend")
            sock, raw = _raw_request(url, red=200)
            sock.sendall(raw)
            wait_for(
                lambda: metrics.get_sample_value("yolor_queue_depth", MODEL) == 1, "the second image queued"
            )
            sock.close()
            wait_for(
                lambda: metrics.get_sample_value("yolor_client_disconnects_total", MODEL) == 1, "disconnect"
            )
        finally:
            gate.release.set()
            holder.join(WAIT_S)
        assert first["r"].status_code == 200
        wait_for(
            lambda: (
                metrics.get_sample_value("yolor_dropped_images_total", {**MODEL, "reason": "abandoned"}) == 1
            ),
            "the batcher dropped the abandoned image",
        )
        assert seen == [30]  # the disconnected client's image never reached the backend
        assert made["backend"].batch_sizes == [1]
        assert metrics.get_sample_value("yolor_rejected_total", {"reason": "client_disconnected"}) == 1
        after = httpx.post(f"{url}/detect", files=_image(90), params={"conf": 0}, timeout=WAIT_S)
        assert after.status_code == 200 and seen == [30, 90]
