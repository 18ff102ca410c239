"""Several models in one server (a model repository): each request answered by the model and version
it names, the default model for one that names none, 404 with the list for one not loaded
(tests.support.repository: every answer says which model ran)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from service.core.repository import RepositoryError, startup
from service.http.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings
from tests.support.app import assert_error, encode, files, running, solid, wait_until
from tests.support.model_files import write_model_dir
from tests.support.repository import SIZES, repository, repository_app, score, scored_by_size

pytestmark = [pytest.mark.api, pytest.mark.anyio]

IMAGE = encode(solid(48, 64, (90, 20, 200)))


async def answered_by(client, params: dict[str, Any] | None = None) -> float:
    """The score of the one box (which model ran), checked against the answer's model block."""
    response = await client.post("/detect", params=params or {}, files=files(IMAGE))
    assert response.status_code == 200, response.text
    (detection,) = response.json()["results"][0]["detections"]
    model = response.json()["model"]
    assert score(model["input_size"]) == pytest.approx(detection["score"])
    assert model["input_size"] == SIZES.get((model["name"], model["version"]), model["input_size"])
    return float(detection["score"])


async def test_each_request_gets_the_model_and_version_it_names(tmp_path: Path) -> None:
    app = repository_app(repository(tmp_path, all_versions=True))
    async with running(app) as client:
        assert await answered_by(client) == pytest.approx(score(128))  # default: the first by name
        assert await answered_by(client, {"model": "small"}) == pytest.approx(score(96))  # newest
        assert await answered_by(client, {"model": "small", "version": 1}) == pytest.approx(score(64))
        assert await answered_by(client, {"model": "big", "version": 1}) == pytest.approx(score(128))
        body = {"images": [base64.b64encode(IMAGE).decode()], "model": "small", "version": 1}
        response = await client.post("/detect/json", json=body)
        assert response.json()["results"][0]["detections"][0]["score"] == pytest.approx(score(64))
        info = (await client.get("/model", params={"model": "small", "version": 1})).json()
        assert info["input_size"] == 64
        assert (await client.get("/model")).json()["input_size"] == 128
        message = assert_error(
            await client.post("/detect", params={"model": "nope"}, files=files(IMAGE)), 404, "unknown_model"
        )
        assert "big (1)" in message and "small (2, 1)" in message
        message = assert_error(
            await client.post("/detect", params={"model": "big", "version": 2}, files=files(IMAGE)),
            404,
            "unknown_model",
        )
        assert "versions of 'big': 1" in message
        assert_error(await client.get("/model", params={"model": "nope"}), 404, "unknown_model")
        assert_error(
            await client.post("/detect", params={"version": 0}, files=files(IMAGE)), 422, "invalid_request"
        )


async def test_the_version_policy_and_the_models_setting_choose_what_is_loaded(tmp_path: Path) -> None:
    root = repository(tmp_path)  # small: latest only
    app = repository_app(root, models=["small"])
    async with running(app) as client:
        assert [(m.name, m.version) for m in app.state.service.models] == [("small", 2)]
        assert await answered_by(client) == pytest.approx(score(96))  # the only model: the default
        response = await client.post("/detect", params={"model": "small", "version": 1}, files=files(IMAGE))
        assert_error(response, 404, "unknown_model")  # present in the folder, not served by its policy
        assert_error(
            await client.post("/detect", params={"model": "big"}, files=files(IMAGE)), 404, "unknown_model"
        )


def test_what_start_up_loads_and_its_refusals(tmp_path: Path) -> None:
    root = repository(tmp_path / "repo", all_versions=True)
    models, default, problems = startup(Settings(model_repository=root))
    assert [(m.name, m.version) for m in models] == [("big", 1), ("small", 2), ("small", 1)]
    assert default == "big" and problems == {}
    models, default, _ = startup(Settings(model_repository=root, models=["small"], default_model="small"))
    assert [(m.name, m.version) for m in models] == [("small", 2), ("small", 1)] and default == "small"
    alone, default, _ = startup(Settings(model_dir=root / "big", v2_model_name="cars"))
    assert [(m.name, m.version, m.path) for m in alone] == [("cars", 1, root / "big")] and default == "cars"
    with pytest.raises(RepositoryError, match="'nope' is not a model"):
        startup(Settings(model_repository=root, models=["nope"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError, match="no model in"):
        startup(Settings(model_repository=tmp_path / "empty"))
    with pytest.raises(RepositoryError, match="is one model folder, not a repository"):
        startup(Settings(model_repository=root / "big"))
    with pytest.raises(ValidationError, match="choose from model_repository"):
        Settings(models=["small"])
    with pytest.raises(ValidationError, match="is not one of models"):
        Settings(model_repository=root, models=["small"], default_model="big")


async def v2_infer(client, name: str, version: int | None = None) -> tuple[int, dict[str, Any]]:
    """A tensor infer (zeros at the model's input size, from its metadata): (status, body)."""
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
    meta = (await client.get(path)).json()
    if "inputs" not in meta:
        return 404, meta
    shape = [1, *meta["inputs"][0]["shape"][1:]]
    data = [0.0] * int(np.prod(shape))
    body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": shape, "data": data}]}
    response = await client.post(f"{path}/infer", json=body)
    return response.status_code, response.json()


async def test_v2_serves_every_model_and_version_under_its_own_name(tmp_path: Path) -> None:
    """KServe v2: each loaded model and version by name (and its `_image` variant), its metadata
    listing the loaded versions, statistics per version, and a 404 listing the models."""
    app = repository_app(repository(tmp_path, all_versions=True))
    async with running(app) as client:
        for name, version, size in [
            ("big", None, 128),
            ("small", None, 96),
            ("small", 1, 64),
            ("small", 2, 96),
        ]:
            status, body = await v2_infer(client, name, version)
            assert status == 200, body
            assert body["model_name"] == name and body["model_version"] == str(
                version or (2 if size == 96 else 1)
            )
            (output,) = body["outputs"]
            assert output["data"][4] == pytest.approx(score(size))  # row 0's score: which model ran
        meta = (await client.get("/v2/models/small")).json()
        assert meta["versions"] == ["2", "1"] and meta["inputs"][0]["shape"] == [-1, 3, 96, 96]
        image_meta = (await client.get("/v2/models/small_image/versions/1")).json()
        assert image_meta["name"] == "small_image" and image_meta["inputs"][0]["datatype"] == "BYTES"
        config = (await client.get("/v2/models/small/versions/1/config")).json()
        assert config["input"][0]["dims"] == [3, 64, 64]
        stats = (await client.get("/v2/models/small/stats")).json()["model_stats"]
        assert [(s["version"], s["inference_count"]) for s in stats] == [("2", 2), ("1", 1)]
        every = (await client.get("/v2/models/stats")).json()["model_stats"]
        assert {(s["name"], s["version"]) for s in every} == {
            (n + suffix, str(v))
            for n, v in [("big", 1), ("small", 2), ("small", 1)]
            for suffix in ("", "_image")
        }
        for path in ("/v2/models/nope", "/v2/models/small/versions/3", "/v2/models/big/versions/x/ready"):
            response = await client.get(path)
            assert response.status_code == 404 and "big (1), small (2, 1)" in response.json()["error"], path


async def test_sighup_re_reads_the_repository(tmp_path: Path) -> None:
    """A re-read serves what the repository holds now: a new version by its policy, a model whose
    folder went away unloaded, a start-up model added since loaded; what it replaced is closed."""
    root = repository(tmp_path)  # small: the latest version only
    app = repository_app(root)
    async with running(app) as client:
        state = app.state.service
        before = {(m.name, m.version): m for m in state.models}
        assert set(before) == {("big", 1), ("small", 2)}
        shutil.copytree(root / "small" / "2", root / "small" / "3")
        shutil.rmtree(root / "big")
        write_model_dir(root / "late", input_size=32)
        await state.reloads.reload_on_signal()
        assert {(m.name, m.version) for m in state.models} == {("late", 1), ("small", 3)}
        assert all(m.backend.closed for m in before.values()) and state.retiring == set()
        assert await answered_by(client, {"model": "late"}) == pytest.approx(score(32))
        assert_error(
            await client.post("/detect", files=files(IMAGE)), 404, "unknown_model"
        )  # big was the default
        assert_error(await client.get("/model"), 404, "unknown_model")
        assert (await client.get("/model", params={"model": "late"})).json()["input_size"] == 32


async def test_the_log_records_of_a_request_name_the_model_it_took(tmp_path: Path) -> None:
    """JSON log lines carry `model` (name:version) in the task that took it, and only there."""
    app = repository_app(repository(tmp_path, all_versions=True))

    def line() -> dict[str, Any]:
        record = logging.LogRecord("yolor", logging.INFO, __file__, 1, "answered", None, None)
        return json.loads(JsonFormatter().format(record))

    async def request() -> dict[str, Any]:
        app.state.service.current("small", 1)
        return line()

    async with running(app):
        assert (await asyncio.create_task(request()))["model"] == "small:1"
        assert "model" not in line()  # another task: another request's model does not leak into it


async def test_a_load_that_fails_changes_nothing(tmp_path: Path) -> None:
    """A load whose last version is broken: 422 reload_failed naming it, the loaded versions keep
    serving (the very same objects), and the versions this load had loaded before it are closed."""
    root = repository(tmp_path, all_versions=True)
    made: list[Any] = []

    def recording(settings: Settings, manifest: Any) -> Any:
        made.append(scored_by_size(settings, manifest))
        return made[-1]

    key = "admin-key-of-a-test"
    app = create_app(Settings(model_repository=root, admin_keys=[key]), backend_factory=recording)
    async with running(app) as client:
        state = app.state.service
        before = {(m.name, m.version): m for m in state.models}
        loaded_at_start = len(made)
        shutil.copytree(root / "small" / "2", root / "small" / "3")  # loaded first (newest first)
        (root / "small" / "1" / "model.json").write_text('{"format": "yolor-serving/model/1", "arch": ')
        refused = await client.post("/v2/repository/models/small/load", headers={"X-API-Key": key})
        assert refused.status_code == 422 and "small/1" in refused.json()["error"], refused.text
        assert {(m.name, m.version): m for m in state.models} == before
        assert await answered_by(client, {"model": "small", "version": 1}) == pytest.approx(score(64))
        assert len(made) == loaded_at_start + 2  # versions 3 and 2, read again; 1 failed before its backend
        assert all(backend.closed for backend in made[loaded_at_start:])
        assert not any(m.backend.closed for m in state.models)
        assert state.metrics.reloads.labels(result="failed")._value.get() == 1


def loaded(app) -> set[tuple[str, int]]:
    return {(m.name, m.version) for m in app.state.service.models}


async def test_models_load_on_demand_and_the_least_recently_used_give_way(tmp_path: Path) -> None:
    """YOLOR_LOAD_ON_DEMAND with YOLOR_MAX_MODELS=2: a request for a model of the repository loads
    it; the model loaded on demand that was used least recently is unloaded to make room; the one
    loaded at start-up never is."""
    root = repository(tmp_path)  # small: its latest version, 2
    write_model_dir(root / "third", input_size=32)
    app = repository_app(root, models=["big"], load_on_demand=True, max_models=2)
    async with running(app) as client:
        assert loaded(app) == {("big", 1)}
        assert (await client.get("/v2/models/small/ready")).status_code == 404  # loadable, not loaded
        assert await answered_by(client, {"model": "small"}) == pytest.approx(score(96))  # loaded for it
        assert (await client.get("/v2/models/small/ready")).json() == {"name": "small", "ready": True}
        assert loaded(app) == {("big", 1), ("small", 2)}
        assert await answered_by(client, {"model": "third"}) == pytest.approx(score(32))
        assert loaded(app) == {("big", 1), ("third", 1)}  # small gave way, big is pinned
        assert await answered_by(client, {"model": "big"}) == pytest.approx(score(128))
        zeros = [0.0] * (3 * 96 * 96)
        body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 96, 96], "data": zeros}]}
        answer = await client.post("/v2/models/small/infer", json=body)  # v2 loads on demand too
        assert answer.status_code == 200 and answer.json()["model_version"] == "2", answer.text
        assert loaded(app) == {("big", 1), ("small", 2)}
        await app.state.service.reloads.reload_on_signal()  # re-read: small may still give way, big not
        assert {(m.name, m.on_demand) for m in app.state.service.models} == {("big", False), ("small", True)}
        assert_error(
            await client.post("/detect", params={"model": "nope"}, files=files(IMAGE)), 404, "unknown_model"
        )
        response = await client.post("/detect", params={"model": "small", "version": 1}, files=files(IMAGE))
        assert_error(response, 404, "unknown_model")  # present, but not served by its policy


async def test_a_model_with_requests_in_flight_never_gives_way(tmp_path: Path) -> None:
    root = repository(tmp_path)
    write_model_dir(root / "third", input_size=32)
    release = threading.Event()

    def factory(settings: Settings, manifest: Any) -> Any:
        backend = scored_by_size(settings, manifest)
        if manifest.input_size == 96:  # small: each batch waits for `release`
            run = backend._fn
            backend._fn = lambda batch: (release.wait(10), run(batch))[1]
        return backend

    settings = Settings(
        model_repository=root, models=["big"], load_on_demand=True, max_models=2, warmup=False
    )
    app = create_app(settings, backend_factory=factory)
    async with running(app) as client:
        release.set()
        await answered_by(client, {"model": "small"})  # loaded on demand
        release.clear()
        held = asyncio.create_task(client.post("/detect", params={"model": "small"}, files=files(IMAGE)))
        await wait_until(
            lambda: next(m for m in app.state.service.models if m.name == "small").users == 1, "held"
        )
        refused = await client.post("/detect", params={"model": "third"}, files=files(IMAGE))
        message = assert_error(refused, 503, "overloaded")
        assert "YOLOR_MAX_MODELS=2" in message and loaded(app) == {("big", 1), ("small", 2)}
        release.set()
        assert (await held).status_code == 200
        assert await answered_by(client, {"model": "third"}) == pytest.approx(score(32))
        assert loaded(app) == {("big", 1), ("third", 1)}


async def test_the_memory_budget_unloads_the_least_recently_used(tmp_path: Path, monkeypatch) -> None:
    """YOLOR_MODEL_MEMORY_MB: each model loaded on demand is measured as it loads (here the process
    grows 100 MB per load); over the budget, the least recently used give way."""
    grown = iter(range(0, 10_000, 100))
    monkeypatch.setattr("service.core.reload.resident_mb", lambda: float(next(grown)))
    root = repository(tmp_path)
    write_model_dir(root / "third", input_size=32)
    app = repository_app(root, models=["big"], load_on_demand=True, model_memory_mb=250)
    async with running(app) as client:
        await answered_by(client, {"model": "small"})
        await answered_by(client, {"model": "third"})
        assert loaded(app) == {("big", 1), ("small", 2), ("third", 1)}  # 200 MB: within
        assert [m.memory_mb for m in app.state.service.models if m.on_demand] == [100.0, 100.0]
        await answered_by(client, {"model": "small"})  # small is now the most recently used
        shutil.copytree(root / "third", root / "fourth")
        await answered_by(client, {"model": "fourth"})  # 300 MB: third, used least recently, gives way
        assert loaded(app) == {("big", 1), ("small", 2), ("fourth", 1)}


async def test_a_model_whose_policy_serves_more_versions_than_the_limit_is_refused(tmp_path: Path) -> None:
    root = repository(tmp_path, all_versions=True)
    app = repository_app(root, models=["big"], load_on_demand=True, max_models=1)
    async with running(app) as client:
        refused = await client.post("/detect", params={"model": "small"}, files=files(IMAGE))
        assert "serves 2 versions, more than YOLOR_MAX_MODELS=1" in assert_error(
            refused, 422, "reload_failed"
        )
        assert loaded(app) == {("big", 1)}
