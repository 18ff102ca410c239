"""Zero-downtime model reload: POST /admin/reload under steady load from several clients, a broken
model folder, a model that fails its warm-up, admin keys, and SIGHUP to a real `yolor serve`."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.backends import FakeBackend
from service.http.app import create_app
from service.manifest import ModelManifest
from service.settings import Settings
from tests.support.app import assert_error, encode, files, running, solid, wait_for
from tests.support.model_files import TOP_K, write_model_dir

pytestmark = [pytest.mark.api, pytest.mark.anyio]

KEY = "admin-key-0123"
ADMIN = {"X-API-Key": KEY}
IMAGE = encode(solid(64, 64, (90, 90, 90)))
# Large enough that decoding takes a while: requests hold the model they took while they decode.
LARGE = encode(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8))


def scored(score: float, delay_s: float = 0.0):
    """A fake model whose every image gets one box of `score`: the answer tells the models apart."""

    def fn(batch: np.ndarray) -> np.ndarray:
        if delay_s:
            time.sleep(delay_s)  # a batch takes a while: reloads land while batches are in flight
        out = np.zeros((len(batch), TOP_K, 6), np.float32)
        out[:, 0] = [8, 8, 40, 40, score, 0]
        return out

    return fn


class Models:
    """Model folders whose fake backends answer a folder-specific score; every backend made is
    remembered by weak reference (a retired model must be released and collected)."""

    def __init__(
        self,
        root: Path,
        scores: dict[str, float],
        *,
        failing: frozenset[str] = frozenset(),
        input_sizes: dict[str, int] | None = None,
    ):
        self.dirs = {name: root / name for name in scores}
        for name, directory in self.dirs.items():
            write_model_dir(
                directory, **({"input_size": input_sizes[name]} if name in (input_sizes or {}) else {})
            )
        self.scores = {self.dirs[name].resolve(): score for name, score in scores.items()}
        self.failing = {self.dirs[name].resolve() for name in failing}
        self.made: list[weakref.ref[FakeBackend]] = []

    def factory(self, settings: Settings, manifest: ModelManifest) -> FakeBackend:
        folder = settings.model_dir.resolve()  # a served symlink means the folder it points at now
        fn = scored(self.scores[folder], delay_s=0.003)
        if folder in self.failing:
            fn = _raises
        backend = FakeBackend.for_manifest(manifest, fn)
        self.made.append(weakref.ref(backend))
        return backend

    def alive(self) -> list[FakeBackend]:
        gc.collect()
        return [b for ref in self.made if (b := ref()) is not None]


def _raises(batch: np.ndarray) -> np.ndarray:
    raise RuntimeError("this model's runtime is broken")


def app_for(models: Models, first: str, **settings):
    settings = {"admin_keys": [KEY], "max_delay_ms": 1.0, **settings}
    return create_app(Settings(model_dir=models.dirs[first], **settings), backend_factory=models.factory)


@pytest.mark.slow  # four clients through three reloads, ~5 s
async def test_three_reloads_under_load_fail_no_request_and_mix_no_models(tmp_path):
    models = Models(tmp_path, {"a": 0.5, "b": 0.7})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text('{"format": "yolor-serving/model/1", "arch": ')  # cut short
    answers: list[tuple[int, set[float]]] = []
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            r = await client.post("/detect", files=files(IMAGE, LARGE, IMAGE))
            scores = {d["score"] for res in r.json().get("results", []) for d in res["detections"]}
            answers.append((r.status_code, scores))

    async def settle(count: int = 20) -> None:  # let the clients get `count` more answers
        target = len(answers) + count
        while len(answers) < target:
            await asyncio.sleep(0.005)

    app = app_for(models, "a")
    async with running(app) as client:
        clients = [asyncio.create_task(client_loop(client)) for _ in range(4)]
        await settle()
        to_b = await client.post("/admin/reload", json={"model_dir": str(models.dirs["b"])}, headers=ADMIN)
        await settle()
        to_broken = await client.post("/admin/reload", json={"model_dir": str(broken)}, headers=ADMIN)
        await settle()
        back_to_a = await client.post(
            "/admin/reload", json={"model_dir": str(models.dirs["a"])}, headers=ADMIN
        )
        await settle()
        stop.set()
        await asyncio.gather(*clients)
        info = (await client.get("/model")).json()
        metrics = (await client.get("/metrics")).text
        state = app.state.service

    assert to_b.status_code == 200, to_b.text
    assert to_b.json()["model_dir"] == str(models.dirs["b"]) and to_b.json()["previous_released"]
    assert "reload of" in assert_error(to_broken, 422, "reload_failed")
    assert f"still serving {models.dirs['b']}" in to_broken.json()["error"]["message"]
    assert back_to_a.status_code == 200, back_to_a.text
    statuses = [status for status, _ in answers]
    assert statuses == [200] * len(answers)  # zero failed requests
    assert all(len(scores) == 1 for _, scores in answers)  # each answered by one model
    served = [scores.pop() for _, scores in answers]
    assert {0.5, 0.7} <= set(served)
    assert served[-1] == 0.5  # the last answers come from the model reloaded last
    assert info["sample_image"] is None and metrics.count("yolor_model_info{") == 1
    assert f'model_dir="{models.dirs["a"]}"' in metrics
    assert 'yolor_model_reloads_total{result="ok"} 2.0' in metrics
    assert 'yolor_model_reloads_total{result="failed"} 1.0' in metrics
    assert not state.retiring
    # The retired backends were closed and are gone: one model's worth is left (the lifespan's
    # shutdown has now closed that one too, but the app still holds it).
    alive = models.alive()
    assert len(models.made) == 3 and alive == [state.model.backend]


async def test_a_model_that_fails_its_warm_up_is_closed_and_the_old_one_keeps_serving(tmp_path):
    models = Models(tmp_path, {"a": 0.5, "bad": 0.9}, failing=frozenset({"bad"}))
    app = app_for(models, "a")
    async with running(app) as client:
        r = await client.post("/admin/reload", json={"model_dir": str(models.dirs["bad"])}, headers=ADMIN)
        after = await client.post("/detect", files=files(IMAGE))
        served_dir = app.state.service.model.model_dir
    assert "warm-up failed: RuntimeError" in assert_error(r, 422, "reload_failed")
    assert served_dir == models.dirs["a"] and after.json()["results"][0]["detections"][0]["score"] == 0.5
    assert [b.closed for b in models.alive()] == [True]  # the shutdown closed a; bad was closed by the reload


async def test_reload_rereads_the_served_folder_by_default_and_follows_a_symlink(tmp_path):
    models = Models(tmp_path, {"a": 0.5, "b": 0.7})
    current = tmp_path / "current"
    current.symlink_to(models.dirs["a"], target_is_directory=True)
    app = create_app(
        Settings(model_dir=current, admin_keys=[KEY], max_delay_ms=1.0), backend_factory=models.factory
    )
    async with running(app) as client:
        first = app.state.service.model
        same = await client.post("/admin/reload", headers=ADMIN)
        assert same.status_code == 200, same.text
        assert app.state.service.model is not first and first.backend.closed
        assert same.json()["model_dir"] == same.json()["previous_model_dir"] == str(current)
        current.unlink()
        current.symlink_to(models.dirs["b"], target_is_directory=True)  # ln -sfn b current
        flipped = await client.post("/admin/reload", headers=ADMIN)
        answer = await client.post("/detect", files=files(IMAGE))
    assert flipped.status_code == 200, flipped.text
    assert answer.json()["results"][0]["detections"][0]["score"] == 0.7


async def test_a_reload_to_another_input_size_changes_what_every_endpoint_says(tmp_path):
    models = Models(tmp_path, {"a": 0.5, "big": 0.7}, input_sizes={"big": 128})
    app = app_for(models, "a")
    async with running(app) as client:
        before = (await client.get("/v2/models/yolor")).json()["inputs"][0]["shape"]
        r = await client.post("/admin/reload", json={"model_dir": str(models.dirs["big"])}, headers=ADMIN)
        info = (await client.get("/model")).json()
        after = (await client.get("/v2/models/yolor")).json()["inputs"][0]["shape"]
        detect = await client.post("/detect", files=files(IMAGE))
    assert r.status_code == 200, r.text
    assert before == [-1, 3, 64, 64] and after == [-1, 3, 128, 128] and info["input_size"] == 128
    assert detect.json()["model"]["input_size"] == 128
    assert detect.json()["results"][0]["detections"][0]["score"] == 0.7


async def test_a_slow_upload_does_not_hold_the_model_a_reload_retires(tmp_path):
    models = Models(tmp_path, {"a": 0.5, "b": 0.7})
    boundary = "slow-upload"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n\r\n'
    body = head.encode() + IMAGE + f"\r\n--{boundary}--\r\n".encode()
    rest_may_come = asyncio.Event()

    async def slowly():
        yield body[: len(body) // 2]
        await rest_may_come.wait()  # the client is still uploading while the reload runs
        yield body[len(body) // 2 :]

    app = app_for(models, "a", request_timeout_s=5.0)
    async with running(app) as client:
        first = app.state.service.model
        upload = asyncio.create_task(
            client.post(
                "/detect",
                content=slowly(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        )
        await asyncio.sleep(0.05)
        reload = await asyncio.wait_for(
            client.post("/admin/reload", json={"model_dir": str(models.dirs["b"])}, headers=ADMIN), 3.0
        )
        closed_before_the_upload_ended = first.backend.closed
        rest_may_come.set()
        answer = await upload
    assert reload.status_code == 200 and reload.json()["previous_released"], reload.text
    assert closed_before_the_upload_ended  # the retirement did not wait for the half-sent request
    assert answer.status_code == 200 and answer.json()["results"][0]["detections"][0]["score"] == 0.7


async def test_admin_keys(tmp_path):
    models = Models(tmp_path, {"a": 0.5})
    async with running(app_for(models, "a", admin_keys=[], api_keys=["user-key-0123"])) as client:
        disabled = await client.post("/admin/reload", headers={"X-API-Key": "user-key-0123"})
    assert "set YOLOR_ADMIN_KEYS" in assert_error(disabled, 403, "forbidden")
    async with running(app_for(models, "a", api_keys=["user-key-0123"])) as client:
        missing = await client.post("/admin/reload")
        user_key = await client.post("/admin/reload", headers={"X-API-Key": "user-key-0123"})
        bearer = await client.post("/admin/reload", headers={"Authorization": f"Bearer {KEY}"})
        detect_with_admin_key = await client.post("/detect", files=files(IMAGE), headers=ADMIN)
    assert "an admin key is required" in assert_error(missing, 401, "unauthorized")
    assert "invalid admin key" in assert_error(user_key, 403, "forbidden")
    assert bearer.status_code == 200, bearer.text
    assert_error(detect_with_admin_key, 403, "forbidden")  # admin keys are not API keys


async def test_one_reload_at_a_time_and_none_with_several_workers(tmp_path):
    models = Models(tmp_path, {"a": 0.5, "b": 0.7})
    app = app_for(models, "a")
    async with running(app) as client:
        first = asyncio.create_task(
            client.post("/admin/reload", json={"model_dir": str(models.dirs["b"])}, headers=ADMIN)
        )
        await asyncio.sleep(0)
        while not app.state.service.reloader.busy:
            await asyncio.sleep(0.001)
        second = await client.post("/admin/reload", headers=ADMIN)
        assert (await first).status_code == 200
        unknown_field = await client.post("/admin/reload", json={"dir": "x"}, headers=ADMIN)
    assert "already in progress" in assert_error(second, 409, "reload_unavailable")
    assert_error(unknown_field, 422, "invalid_request")
    async with running(app_for(models, "a", workers=2)) as client:
        several = await client.post("/admin/reload", headers=ADMIN)
    assert "SIGHUP" in assert_error(several, 409, "reload_unavailable")


async def test_signals_during_a_reload_make_one_more_reload_after_it(tmp_path):
    models = Models(tmp_path, {"a": 0.5, "b": 0.7})
    app = app_for(models, "a")
    async with running(app) as client:
        reloader = app.state.service.reloader
        post = asyncio.create_task(
            client.post("/admin/reload", json={"model_dir": str(models.dirs["b"])}, headers=ADMIN)
        )
        while not reloader.busy:
            await asyncio.sleep(0.001)
        signals = [asyncio.create_task(reloader.reload_on_signal()) for _ in range(3)]  # SIGHUP x 3
        assert (await post).status_code == 200
        await asyncio.gather(*signals)
        metrics = (await client.get("/metrics")).text
        served = app.state.service.model.model_dir
    assert 'yolor_model_reloads_total{result="ok"} 2.0' in metrics  # the POST, then one re-read
    assert served == models.dirs["b"]  # the signal re-read the folder the POST switched to


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_a_running_server(tmp_path):
    """A real `yolor serve` (ONNX Runtime, the tiny graph): SIGHUP re-reads the model folder and the
    server keeps answering; a broken folder on SIGHUP is logged and the old model kept."""
    from bench.server import free_port

    model_dir = tmp_path / "model"
    write_model_dir(model_dir, onnx=True)
    port = free_port()
    env = {**os.environ, "YOLOR_HOST": "127.0.0.1", "YOLOR_PORT": str(port), "YOLOR_DEVICE": "cpu"}
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--model", str(model_dir)], env=env,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def reloads(result: str) -> float:
        text = httpx.get(f"{base}/metrics").text
        line = next(
            x for x in text.splitlines() if x.startswith(f'yolor_model_reloads_total{{result="{result}"}}')
        )
        return float(line.split()[-1])

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, "yolor serve never became ready", timeout_s=60)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads("ok") == 1, "SIGHUP did not reload", timeout_s=30)
        (model_dir / "model.onnx").write_bytes(b"not a model any more")  # sha256 no longer matches
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads("failed") == 1, "the broken reload was not counted", timeout_s=30)
        r = httpx.post(f"{base}/detect", files=files(IMAGE))
        assert r.status_code == 200 and process.poll() is None  # still serving, on the old model
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "reload of" in text and "still serving" in text
