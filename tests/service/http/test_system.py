"""Health, readiness around warm-up, /model, /metrics, API keys, the page and the OpenAPI docs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import (
    Gate,
    assert_error,
    encode,
    fake_app,
    files,
    running,
    solid,
    topk_rows,
    wait_until,
)
from tests.support.model_files import write_model_dir

pytestmark = [pytest.mark.api, pytest.mark.anyio]

ROWS = [[2, 2, 12, 12, 0.9, 0], [20, 20, 30, 30, 0.8, 2]]
IMAGE = encode(solid(64, 64, (9, 9, 9)))


async def test_readiness_turns_on_after_warm_up_of_every_batch_size(tmp_path):
    gate = Gate(topk_rows(ROWS))
    app, made = fake_app(tmp_path, gate)
    try:
        async with running(app, ready=False) as client:
            await wait_until(gate.entered.is_set, "warm-up reached the backend")
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            not_ready = await client.get("/readyz")
            refused = await client.post("/detect", files=files(IMAGE))
            gate.release.set()
            await wait_until(lambda: app.state.service.readiness.ready, "ready after warm-up")
            ready = await client.get("/readyz")
            served = await client.post("/detect", files=files(IMAGE))
            metrics = (await client.get("/metrics")).text
    finally:
        gate.release.set()
    assert "warming up" in assert_error(not_ready, 503, "not_ready")
    assert not_ready.headers["retry-after"] == "1"
    assert_error(refused, 503, "not_ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert served.status_code == 200
    assert made["backend"].batch_sizes[:4] == [1, 2, 3, 4]  # warm-up: every size up to max batch
    assert "yolor_ready 1.0" in metrics


async def test_without_warm_up_ready_at_once(tmp_path):
    app, made = fake_app(tmp_path, topk_rows(ROWS), warmup=False)
    async with running(app, ready=False) as client:
        assert (await client.get("/readyz")).status_code == 200
    assert made["backend"].batch_sizes == []


async def test_failed_warm_up_stays_not_ready(tmp_path):
    def broken(batch):
        raise RuntimeError("device lost")

    app, _ = fake_app(tmp_path, broken)
    async with running(app, ready=False) as client:
        await wait_until(lambda: "failed" in app.state.service.readiness.why_not, "warm-up failed")
        message = assert_error(await client.get("/readyz"), 503, "not_ready")
    assert "device lost" in message


async def test_model_endpoint(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(ROWS), max_delay_ms=7)
    async with running(app) as client:
        info = (await client.get("/model")).json()
    assert {"arch", "class_names", "input_size", "backend", "precision", "max_batch_size"} <= set(info)
    assert info["arch"] == "tiny-test"
    assert info["class_names"] == ["person", "car", "dog"]
    assert info["input_size"] == 64
    assert (info["backend"], info["precision"], info["max_batch_size"]) == ("fake", "fp32", 4)
    assert info["max_delay_ms"] == pytest.approx(7)
    assert info["head"] == "topk" and info["output"]["shape"] == ["batch", 4, 6]


MODEL = {"model": "yolor", "version": "1"}  # the one model's labels


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels` in Prometheus text format."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no {name}{labels} in metrics")


async def test_metrics_after_requests(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(ROWS), max_delay_ms=50)
    async with running(app) as client:
        await client.post("/detect", files=files(IMAGE, IMAGE, IMAGE))
        await client.post("/detect", files=files(IMAGE), params={"classes": "dog"})
        await client.post("/detect", files=files(b"junk"))
        r = await client.get("/metrics")
    text = r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert metric(text, "yolor_requests_total", route="/detect", status="200") == 2
    assert metric(text, "yolor_requests_total", route="/detect", status="415") == 1
    assert metric(text, "yolor_request_duration_seconds_count", route="/detect") == 3
    assert metric(text, "yolor_images_total", **MODEL) == 4
    assert metric(text, "yolor_detections_total", **MODEL) == 3 * 2 + 1
    assert metric(text, "yolor_rejected_total", reason="invalid_image") == 1
    # Served batches only (warm-up is not counted): one of 3 images, one of 1.
    assert metric(text, "yolor_batch_size_count", **MODEL) == 2
    assert metric(text, "yolor_batch_size_sum", **MODEL) == 4
    assert metric(text, "yolor_batch_size_bucket", **MODEL, le="2.0") == 1
    assert metric(text, "yolor_queue_wait_seconds_count", **MODEL) == 4
    assert metric(text, "yolor_preprocess_seconds_count", **MODEL) == 4
    assert metric(text, "yolor_postprocess_seconds_count", **MODEL) == 4
    assert (
        metric(text, "yolor_inference_seconds_count", **MODEL) == 2
    )  # warm-up batches are not served requests
    assert metric(text, "yolor_model_request_duration_seconds_count", **MODEL) == 2  # answered by the model
    assert metric(text, "yolor_queue_depth", **MODEL) == 0
    assert metric(text, "yolor_inflight_batches", **MODEL) == 0
    assert (
        metric(
            text,
            "yolor_model_info",
            **MODEL,
            arch="tiny-test",
            backend="fake",
            max_batch="4",
            precision="fp32",
            model_dir=str(tmp_path),
        )
        == 1
    )
    assert metric(text, "yolor_model_reloads_total", result="ok") == 0
    assert metric(text, "yolor_model_last_reload_timestamp_seconds") == 0


async def test_separate_apps_have_separate_metrics(tmp_path):
    first, _ = fake_app(tmp_path / "a", topk_rows(ROWS))
    second, _ = fake_app(tmp_path / "b", topk_rows(ROWS))
    async with running(first) as client:
        await client.post("/detect", files=files(IMAGE))
    async with running(second) as client:
        text = (await client.get("/metrics")).text
    assert metric(text, "yolor_images_total", **MODEL) == 0


KEY = "s3cret-key-1"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-key-0"}, 403),
        ({"X-API-Key": "wrong-key-0"}, 403),
        ({"Authorization": f"Bearer {KEY}"}, 200),
        ({"X-API-Key": KEY}, 200),
        ({"X-API-Key": "other-key-2"}, 200),
    ],
)
async def test_api_keys_protect_detect_and_model(tmp_path, headers, status):
    app, _ = fake_app(tmp_path, topk_rows(ROWS), api_keys=f"{KEY},other-key-2")
    async with running(app) as client:
        detect = await client.post("/detect", files=files(IMAGE), headers=headers)
        model = await client.get("/model", headers=headers)
    assert detect.status_code == model.status_code == status
    if status == 401:
        assert_error(detect, 401, "unauthorized")
        assert detect.headers["www-authenticate"] == "Bearer"
    if status == 403:
        assert_error(model, 403, "forbidden")


async def test_health_and_metrics_stay_open_with_api_keys(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(ROWS), api_keys=[KEY])
    async with running(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/")).status_code == 200


async def test_page_is_self_contained_and_uses_detect(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(ROWS))
    async with running(app) as client:
        r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<canvas" in html and "detect?conf=" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no external assets
    assert "<script src" not in html and "<link" not in html


async def test_openapi_documents_the_routes(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(ROWS))
    async with running(app) as client:
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert {
        "/detect",
        "/detect/json",
        "/detect/annotated",
        "/healthz",
        "/readyz",
        "/metrics",
        "/model",
    } <= set(spec["paths"])
    detect = spec["paths"]["/detect"]["post"]
    detect_params = {p["name"] for p in detect["parameters"]}
    assert {"conf", "iou", "max_det", "classes", "agnostic", "tile", "tile_size"} <= detect_params
    assert docs.status_code == 200
    # the multipart routes read their own request (service.http.direct): documented as FastAPI would
    assert spec["paths"]["/detect/annotated"]["post"]["parameters"] == detect["parameters"]
    for p in detect["parameters"]:
        assert p["in"] == "query" and not p["required"] and p["description"] == p["schema"]["description"]
    upload = detect["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert upload["images"]["type"] == "array" and upload["image"]["type"] == "string"
    schemes = set(spec["components"]["securitySchemes"])
    assert detect["security"] == spec["paths"]["/detect/json"]["post"]["security"]
    listed = {name for entry in detect["security"] for name in entry}
    assert listed == schemes == {"APIKeyHeader", "HTTPBearer"}


async def test_the_openapi_schema_is_the_response_models_and_one_set_of_bounds(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(ROWS))
    async with running(app) as client:
        spec = (await client.get("/openapi.json")).json()
        answer = await client.post("/detect", files=files(encode(solid(64, 64, (255, 0, 0)))))
    schemas = spec["components"]["schemas"]
    for path in ("/detect", "/detect/json"):
        ok = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/DetectResponse"}
    # the answer is exactly the documented model: no field more, none less
    assert set(answer.json()) == set(schemas["DetectResponse"]["properties"])
    assert set(answer.json()["timing_ms"]) == set(schemas["Timing"]["properties"])
    # query string (/detect) and JSON body (/detect/json) share their bounds
    query = {p["name"]: p["schema"] for p in spec["paths"]["/detect"]["post"]["parameters"]}
    json_route = spec["paths"]["/detect/json"]["post"]
    body = json_route["requestBody"]["content"]["application/json"]["schema"]["properties"]
    for name in ("conf", "iou", "max_det"):
        bounds = {k: v for k, v in query[name].items() if k in ("minimum", "maximum")}
        assert bounds and bounds == {k: v for k, v in body[name].items() if k in ("minimum", "maximum")}


async def test_start_up_refuses_a_backend_that_does_not_fit_the_manifest(tmp_path):
    from service.backends import FakeBackend
    from service.backends.factory import BackendMismatch
    from service.http.app import create_app
    from service.settings import Settings

    write_model_dir(tmp_path)
    made = []

    def factory(settings, manifest):
        made.append(FakeBackend(topk_rows(ROWS), input_size=32, output_shape=(4, 6)))
        return made[-1]

    app = create_app(Settings(model_dir=tmp_path), backend_factory=factory)
    with pytest.raises(BackendMismatch, match=r"input shape \(3, 32, 32\) != manifest \(3, 64, 64\)"):
        async with running(app):
            pass
    assert made[0].closed


async def test_start_up_without_a_model_is_a_clear_error(tmp_path):
    from service.http.app import create_app
    from service.manifest import ManifestError
    from service.settings import Settings

    app = create_app(Settings(model_dir=tmp_path / "missing"))
    with pytest.raises(ManifestError, match=r"no model\.json in .*missing: export the model first"):
        async with running(app):
            pass


async def test_cors_for_configured_origins_only(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(ROWS), cors_origins="https://ui.example")
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    async with running(app) as client:
        allowed = await client.options("/detect", headers={"Origin": "https://ui.example", **preflight})
        other = await client.options("/detect", headers={"Origin": "https://evil.example", **preflight})
        error = await client.post("/detect", files=files(b"junk"), headers={"Origin": "https://ui.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
    assert "access-control-allow-origin" not in other.headers
    assert error.status_code == 415 and error.headers["access-control-allow-origin"] == "https://ui.example"


async def test_warm_up_post_processes_a_bounded_number_of_rows(tmp_path, monkeypatch):
    import service.core.detector
    import service.core.postprocess

    rows = 50 * service.core.detector.WARMUP_ROWS  # a raw head at 1280 px has ~100k rows
    write_model_dir(tmp_path, head="raw", raw_rows=rows)
    seen: list[int] = []
    select = service.core.postprocess.select_detections

    def counting(boxes, *args, **kwargs):
        seen.append(len(boxes))
        return select(boxes, *args, **kwargs)

    def model(batch: np.ndarray) -> np.ndarray:
        out = np.zeros((len(batch), rows, 5 + 3), np.float32)
        out[..., :4] = [20, 20, 8, 8]
        out[..., 4:] = 0.5  # every row a candidate at conf 0
        return out

    monkeypatch.setattr(service.core.postprocess, "select_detections", counting)
    app, _ = fake_app(tmp_path, model, head="raw")
    async with running(app):
        pass
    assert seen and max(seen) <= service.core.detector.WARMUP_ROWS * 3  # rows x classes at most
