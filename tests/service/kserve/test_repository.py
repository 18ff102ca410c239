"""Triton's model repository extension through tritonclient, unchanged, over HTTP and gRPC against a
real server: the index, load (a new model, a version replaced) and unload, admin keys only, while
requests for the models keep coming and none fails (tests.support.repository: every answer says
which model and version ran)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.app import serving, wait_for
from tests.support.model_files import write_model_dir
from tests.support.repository import repository, repository_app, score

http = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
utils = pytest.importorskip("tritonclient.utils")

pytestmark = pytest.mark.slow  # a real server and two clients

API, ADMIN = "api-key-of-the-test-1", "admin-key-of-the-test-1"
BEARER = {"authorization": f"Bearer {ADMIN}"}


def infer(client, module, name: str, size: int, version: str = "") -> tuple[str, float]:
    """(the version that answered, its score to 4 places) for a tensor infer of zeros at `size`."""
    tensor = module.InferInput("images", [1, 3, size, size], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, size, size), np.float32))
    result = client.infer(name, [tensor], model_version=version, headers={"x-api-key": API})
    response = result.get_response()
    answered = response["model_version"] if isinstance(response, dict) else response.model_version
    return answered, round(float(result.as_numpy("detections")[0, 0, 4]), 4)


def index(client) -> list[tuple[str, str, str, str]]:
    entries = client.get_model_repository_index(headers=BEARER)
    if not isinstance(entries, list):  # gRPC: a message
        entries = [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in entries.models
        ]
    return [(e["name"], e.get("version", ""), e.get("state", ""), e.get("reason", "")) for e in entries]


def test_index_load_replace_and_unload_over_http_and_grpc_with_no_failed_request(tmp_path: Path) -> None:
    root = repository(tmp_path / "models")
    write_model_dir(root / "broken")
    (root / "broken" / "config.json").write_text('{"version_policy": {"newest": {}}}')
    app = repository_app(root, grpc_port=0, api_keys=[API], admin_keys=[ADMIN])
    with serving(app) as url:
        h = http.InferenceServerClient(url.removeprefix("http://"))
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{app.state.grpc.port}")
        wait_for(lambda: h.is_server_ready(), "never ready")
        assert "model_repository" in h.get_server_metadata()["extensions"]
        entries = index(h)
        assert entries[:3] == [
            ("big", "1", "READY", ""),
            ("small", "2", "READY", ""),
            ("small", "1", "UNAVAILABLE", "not served by its version policy"),
        ]
        assert entries[3][:3] == ("broken", "", "UNAVAILABLE") and "unknown policy 'newest'" in entries[3][3]
        assert index(g) == entries
        ready = httpx.post(f"{url}/v2/repository/index", json={"ready": True}, headers=BEARER).json()
        assert [(e["name"], e["version"]) for e in ready] == [("big", "1"), ("small", "2")]

        # Requests for small (its newest version) and big keep coming through every change below.
        failures: list[str] = []
        answered: set[tuple[str, float]] = set()
        stop = threading.Event()

        def keep_asking() -> None:
            client = http.InferenceServerClient(url.removeprefix("http://"))
            while not stop.is_set():
                try:
                    answered.add(infer(client, http, "small", 96))
                except Exception as e:  # any failure fails the test
                    failures.append(repr(e))

        traffic = threading.Thread(target=keep_asking)
        traffic.start()
        try:
            # A model put into the repository while serving, loaded over gRPC.
            write_model_dir(root / "third" / "4", input_size=160)
            assert ("third", "4", "UNAVAILABLE", "unloaded") in index(h)
            g.load_model("third", headers=BEARER)
            assert infer(g, grpcclient, "third", 160) == ("4", round(score(160), 4))
            # A new version of small, loaded over HTTP: its policy (latest) serves 3 only.
            shutil.copytree(root / "small" / "2", root / "small" / "3")
            h.load_model("small", headers=BEARER)
            assert infer(h, http, "small", 96, "3") == ("3", round(score(96), 4))
            with pytest.raises(utils.InferenceServerException, match="unknown model") as gone:
                infer(h, http, "small", 96, "2")
            assert gone.value.status() == "404"
            # big unloaded over gRPC; it then answers nothing.
            g.unload_model("big", headers=BEARER)
            with pytest.raises(utils.InferenceServerException, match="unknown model"):
                infer(g, grpcclient, "big", 128)
        finally:
            stop.set()
            traffic.join()
        assert failures == []
        assert answered >= {("2", round(score(96), 4)), ("3", round(score(96), 4))}
        assert {(m.name, m.version) for m in app.state.service.models} == {("small", 3), ("third", 4)}
        assert app.state.service.retiring == set()  # what was replaced or unloaded has been closed
        assert index(g)[:2] == [("big", "1", "UNAVAILABLE", "unloaded"), ("small", "3", "READY", "")]
        h.close()
        g.close()


def test_the_repository_api_takes_admin_keys_only_and_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    app = repository_app(repository(tmp_path / "models"), grpc_port=0, api_keys=[API], admin_keys=[ADMIN])
    with serving(app) as url:
        h = http.InferenceServerClient(url.removeprefix("http://"))
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{app.state.grpc.port}")
        wait_for(lambda: h.is_server_ready(), "never ready")
        for client, denied in ((h, "403"), (g, "StatusCode.PERMISSION_DENIED")):
            for call in (
                client.get_model_repository_index,
                lambda c=client, **kw: c.unload_model("big", **kw),
            ):
                with pytest.raises(utils.InferenceServerException) as refused:
                    call(headers={"x-api-key": API})  # an API key is not an admin key
                assert refused.value.status() == denied
        cases = [
            (
                lambda c: c.load_model("nope", headers=BEARER),
                "404",
                "StatusCode.NOT_FOUND",
                "no model 'nope'",
            ),
            (lambda c: c.unload_model("nope", headers=BEARER), "404", "StatusCode.NOT_FOUND", "not loaded"),
            (
                lambda c: c.load_model("big", config='{"max_batch_size": 2}', headers=BEARER),
                "422",
                "StatusCode.INVALID_ARGUMENT",
                "load takes no parameters (config given)",
            ),
        ]
        for call, http_status, grpc_status, message in cases:
            for client, status in ((h, http_status), (g, grpc_status)):
                with pytest.raises(utils.InferenceServerException) as refused:
                    call(client)
                assert refused.value.status() == status and message in refused.value.message()
        assert {(m.name, m.version) for m in app.state.service.models} == {("big", 1), ("small", 2)}
        h.close()
        g.close()
