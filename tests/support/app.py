"""Running the real app in-process for tests: lifespan + httpx ASGITransport, images, fake models."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from fastapi import FastAPI

from service.backends import FakeBackend
from service.http.app import create_app
from service.manifest import ModelManifest
from service.settings import DEMO_MODEL_DIR, Settings
from tests.support.model_files import TOP_K, write_model_dir

WAIT_S = 5.0  # upper bound for anything a test waits on; nothing should come near it


def encode(image_rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def solid(height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((height, width, 3), rgb, dtype=np.uint8)


def files(*blobs: bytes, field: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"img{i}.png", blob, "application/octet-stream")) for i, blob in enumerate(blobs)]


def topk_rows(rows: list[list[float]]) -> Callable[[np.ndarray], np.ndarray]:
    """A fake top-K model: every image gets `rows` (x1, y1, x2, y2, score, class id), zero-padded to K."""
    table = np.zeros((TOP_K, 6), np.float32)
    table[: len(rows)] = rows

    def fn(batch: np.ndarray) -> np.ndarray:
        return np.repeat(table[None], len(batch), axis=0)

    return fn


def red_scored(batch: np.ndarray) -> np.ndarray:
    """A fake top-K model whose single box scores the image's mean red value: tells images apart."""
    out = np.zeros((len(batch), TOP_K, 6), np.float32)
    out[:, 0, :4] = [8, 8, 40, 40]
    out[:, 0, 4] = batch[:, 0].mean(axis=(1, 2))
    return out


class Gate:
    """Makes a fake backend block until released: lets tests hold a batch in flight."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.release.wait(WAIT_S):
            raise TimeoutError("gate never released")
        return self.fn(batch)


def fake_app(
    model_dir: Path,
    fn: Callable[[np.ndarray], np.ndarray],
    *,
    head: str = "topk",
    max_batch_size: int | None = None,
    **settings: Any,
) -> tuple[FastAPI, dict[str, FakeBackend]]:
    """The real app over a FakeBackend; the dict gets the backend under "backend" once it is built."""
    if not (model_dir / "model.json").exists():
        write_model_dir(model_dir, head=head)
    made: dict[str, FakeBackend] = {}

    def factory(s: Settings, manifest: ModelManifest) -> FakeBackend:
        made["backend"] = FakeBackend.for_manifest(manifest, fn, max_batch_size=max_batch_size)
        return made["backend"]

    app = create_app(Settings(model_dir=model_dir, **settings), backend_factory=factory)
    return app, made


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT_S
    while not condition():
        if loop.time() > give_up:
            raise AssertionError(f"timed out waiting: {what}")
        await asyncio.sleep(0.002)


@asynccontextmanager
async def running(app: FastAPI, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app's lifespan, yield a client; with `ready`, wait for /readyz to say 200 first."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if ready:
                await wait_until(lambda: app.state.service.readiness.ready, "the app never became ready")
            yield client


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["request_id"] == response.headers["x-request-id"], body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app behind a real uvicorn server on a free 127.0.0.1 port (a thread); yields its base URL.

    For what an in-process transport cannot show: real sockets, clients that disconnect.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    give_up = time.monotonic() + WAIT_S
    while not (server.started and server.servers):
        if time.monotonic() > give_up or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT_S * 3)


def demo_app(**settings: Any) -> FastAPI:
    """The real app on ONNX Runtime (one thread) over the bundled demo model."""
    return create_app(
        Settings(
            model_dir=DEMO_MODEL_DIR,
            backend="onnxruntime",
            device="cpu",
            onnx_intra_op_threads=1,
            onnx_parallel_runs=1,
            **settings,
        )
    )


def tiny_onnx_app(model_dir: Path, **settings: Any) -> FastAPI:
    """The real app on ONNX Runtime (one thread) over the tiny exported graph written to `model_dir`."""
    write_model_dir(model_dir, onnx=True)
    return create_app(
        Settings(
            model_dir=model_dir,
            backend="onnxruntime",
            device="cpu",
            onnx_intra_op_threads=1,
            onnx_parallel_runs=1,
            **settings,
        )
    )


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S * 2) -> None:
    """Poll `condition` from a plain thread (e.g. a blocking client's) until true, or fail with `what`."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting: {what}")
        time.sleep(0.01)
