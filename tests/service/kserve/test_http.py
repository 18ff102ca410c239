"""KServe v2 over HTTP, driven by Triton's own Python client against the real app on a real socket
(ONNX Runtime on the tiny exported graph): readiness, metadata, config, infer equal to running the
ONNX directly, binary and JSON tensors, protocol errors."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.app import serving, tiny_onnx_app, wait_for
from tests.support.model_files import INPUT_SIZE, MAX_BATCH, TOP_K

pytestmark = [pytest.mark.api]
http = pytest.importorskip("tritonclient.http")
utils = pytest.importorskip("tritonclient.utils")
S = INPUT_SIZE


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("v2-model")
    app = tiny_onnx_app(model_dir)
    with serving(app) as url:
        client = http.InferenceServerClient(url.removeprefix("http://"))
        wait_for(client.is_server_ready, "the server never became ready")  # warm-up runs after start
        yield client, model_dir, url
        client.close()


def direct(model_dir, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": batch})[0]


def images_input(batch: np.ndarray, binary: bool = True):
    tensor = http.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def test_health_and_metadata(server):
    client, _, _ = server
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("yolor") and client.is_model_ready("yolor", "1")
    assert not client.is_model_ready("other") and not client.is_model_ready("yolor", "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "yolor-serving" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("yolor")
    assert model["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, S, S]}]
    assert model["outputs"] == [{"name": "detections", "datatype": "FP32", "shape": [-1, TOP_K, 6]}]
    config = client.get_model_config("yolor")
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"][0]["dims"] == [3, S, S] and config["output"][0]["dims"] == [TOP_K, 6]
    assert "dynamic_batching" in config


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_the_onnx_run_directly(server, batch_size, binary):
    client, model_dir, _ = server
    batch = np.random.default_rng(batch_size).random((batch_size, 3, S, S), dtype=np.float32)
    outputs = [http.InferRequestedOutput("detections", binary_data=binary)]
    result = client.infer("yolor", [images_input(batch, binary)], outputs=outputs, request_id="r1")
    assert result.get_response()["id"] == "r1"
    got = result.as_numpy("detections")
    assert got.shape == (batch_size, TOP_K, 6)
    np.testing.assert_allclose(got, direct(model_dir, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: [http.InferInput("pixels", [1, 3, S, S], "FP32")], "one input, 'images'"),
        (lambda: [http.InferInput("images", [1, 3, S, S // 2], "FP32")], f"has shape [-1, 3, {S}, {S}]"),
        (lambda: [http.InferInput("images", [1, 3, S, S], "FP64")], "is FP32, got FP64"),
        (lambda: [http.InferInput("images", [MAX_BATCH + 1, 3, S, S], "FP32")], "outside [1, 4]"),
    ],
)
def test_bad_tensors_get_protocol_errors(server, make, message):
    client, _, _ = server
    (tensor,) = make()
    shape = tensor.shape()
    dtype = {"FP32": np.float32, "FP64": np.float64}[tensor.datatype()]
    tensor.set_data_from_numpy(np.zeros(shape, dtype=dtype))
    with pytest.raises(utils.InferenceServerException) as caught:
        client.infer("yolor", [tensor])
    assert caught.value.status() == "400"
    assert message in caught.value.message()


def test_errors_have_the_protocol_shape_and_api_keys_apply(tmp_path):
    import httpx

    with serving(tiny_onnx_app(tmp_path, api_keys=["v2-test-key-1"])) as url:
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, "never ready")
        assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
        denied = httpx.get(f"{url}/v2/models/yolor")
        assert denied.status_code == 401 and isinstance(denied.json()["error"], str)
        headers = {"X-API-Key": "v2-test-key-1", "Inference-Header-Content-Length": "x"}
        bad = httpx.post(f"{url}/v2/models/yolor/infer", content=b"{}", headers=headers)
        assert bad.status_code == 400 and bad.json() == {
            "error": "Inference-Header-Content-Length must be an integer, got 'x'"
        }
        missing = httpx.get(f"{url}/v2/nothing/here", headers=headers)
        assert missing.status_code == 404 and set(missing.json()) == {"error"}
        assert isinstance(httpx.get(f"{url}/detect").json()["error"], dict)  # outside /v2: ours


def test_unknown_model_and_output(server):
    client, _, _ = server
    batch = np.zeros((1, 3, S, S), np.float32)
    with pytest.raises(utils.InferenceServerException) as caught:
        client.infer("nope", [images_input(batch)])
    assert caught.value.status() == "404" and "unknown model: 'nope'" in caught.value.message()
    with pytest.raises(utils.InferenceServerException) as caught:
        client.infer("yolor", [images_input(batch)], outputs=[http.InferRequestedOutput("boxes")])
    assert caught.value.status() == "400" and "outputs are ['detections']" in caught.value.message()


def test_concurrent_clients_are_batched_together(tmp_path):
    """Three batch-1 requests while the backend is busy: the two that waited run as one batch."""
    from tests.support.app import Gate, fake_app, topk_rows

    rows = [[2, 2, 12, 12, 0.9, 0], [20, 20, 30, 30, 0.8, 2]]
    gate = Gate(topk_rows(rows))
    app, made = fake_app(tmp_path, gate, warmup=False, max_delay_ms=50)
    with serving(app) as url:
        client = http.InferenceServerClient(url.removeprefix("http://"), concurrency=3)
        batch = np.zeros((1, 3, S, S), np.float32)
        import gevent  # tritonclient's async HTTP calls are greenlets: waiting must yield to them

        def yielding(condition, what: str) -> None:
            give_up = time.monotonic() + 10
            while not condition():
                assert time.monotonic() < give_up, what
                gevent.sleep(0.01)

        first = client.async_infer("yolor", [images_input(batch)])
        yielding(gate.entered.is_set, "the first request never reached the backend")
        waiting = [client.async_infer("yolor", [images_input(batch)]) for _ in range(2)]
        queue = app.state.service.batcher._queue  # both queued behind the running batch
        yielding(lambda: queue.qsize() == 2, "the two requests never reached the queue")
        gate.release.set()
        results = [r.get_result().as_numpy("detections") for r in (first, *waiting)]
        client.close()
        import httpx

        metrics = httpx.get(f"{url}/metrics").text
    assert made["backend"].batch_sizes == [1, 2]
    # the batch-size histogram: one batch of 1, one of 2
    assert 'yolor_batch_size_bucket{le="1.0",model="yolor",version="1"} 1.0' in metrics
    assert 'yolor_batch_size_bucket{le="2.0",model="yolor",version="1"} 2.0' in metrics
    expected = topk_rows(rows)(batch)
    for got in results:
        np.testing.assert_array_equal(got, expected)


def _photos() -> list[bytes]:
    from tests.support.app import encode, solid

    picture = solid(48, 80, (200, 30, 30))
    picture[:, 40:] = (30, 30, 220)
    return [encode(solid(40, 64, (250, 10, 10))), encode(picture, ".jpg"), encode(solid(30, 30, (5, 5, 5)))]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"conf": 0.05, "iou": 0.3, "max_det": 2, "classes": "0,dog", "agnostic": True},
        {"conf": 0.05, "tile": "true", "tile_size": 32, "tile_overlap": 0.25, "tile_merge": "nmm"},
    ],
)
@pytest.mark.parametrize("binary", [True, False], ids=["binary-out", "json-out"])
def test_image_model_equals_detect(server, params, binary):
    import httpx

    client, _, url = server
    photos = _photos()
    tensor = http.InferInput("images", [len(photos), 1], "BYTES")
    # encoded images are not UTF-8: JSON cannot carry them, the input is always binary
    tensor.set_data_from_numpy(np.array(photos, dtype=object).reshape(-1, 1))
    names = ("boxes", "scores", "class_ids", "count")
    outputs = [http.InferRequestedOutput(n, binary_data=binary) for n in names] if not binary else None
    result = client.infer("yolor_image", [tensor], outputs=outputs, parameters=params)
    boxes, scores, class_ids, count = (result.as_numpy(n) for n in names)
    query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
    served = httpx.post(
        f"{url}/detect", params=query, files=[("images", (f"{i}", p)) for i, p in enumerate(photos)]
    )
    assert served.status_code == 200, served.text
    expected = served.json()["results"]
    assert [r["tiles"] > 0 for r in expected] == [
        "tile" in params,
        "tile" in params,
        False,
    ]  # 30x30: one window
    assert count.tolist() == [len(r["detections"]) for r in expected]
    assert sum(count) > 0
    for i, r in enumerate(expected):
        k = len(r["detections"])
        assert class_ids[i, :k].tolist() == [d["class_id"] for d in r["detections"]]
        # /detect rounds its JSON (scores to 5 decimals, boxes to 2)
        np.testing.assert_allclose(scores[i, :k], [d["score"] for d in r["detections"]], atol=1e-5)
        np.testing.assert_allclose(
            boxes[i, :k], [d["box"] for d in r["detections"]] or np.zeros((0, 4)), atol=0.006
        )
        assert not boxes[i, k:].any() and not scores[i, k:].any()  # padding


def test_image_model_metadata_and_bad_parameters(server):
    client, _, _ = server
    meta = client.get_model_metadata("yolor_image")
    assert meta["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1, 1]}]
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "class_ids", "count"]
    assert client.get_model_config("yolor_image")["input"][0]["data_type"] == "TYPE_STRING"
    tensor = http.InferInput("images", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([_photos()[0]], dtype=object).reshape(1, 1))
    for params, message in [
        ({"conf": 2.0}, "conf: Input should be less than or equal to 1"),
        ({"classes": "7"}, "class id 7"),
        ({"tile": "sometimes"}, "true, false or auto"),
    ]:
        with pytest.raises(utils.InferenceServerException) as caught:
            client.infer("yolor_image", [tensor], parameters=params)
        assert caught.value.status() in ("400", "422") and message in caught.value.message()
    bad = http.InferInput("images", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=object).reshape(1, 1))
    with pytest.raises(utils.InferenceServerException) as caught:
        client.infer("yolor_image", [bad])
    assert caught.value.status() == "415"


def test_statistics_count_what_ran(server):
    """Triton's statistics layout (every key perf_analyzer reads, as numbers), counting this test's
    two requests: 4 images in 2 backend batches, each request once in success/queue/compute_infer."""
    client, _, _ = server

    def stats():
        (model,) = client.get_inference_statistics("yolor")["model_stats"]
        return model

    before = stats()
    for size in (3, 1):
        batch = np.zeros((size, 3, S, S), np.float32)
        client.infer("yolor", [images_input(batch)])
    after = stats()
    assert (after["name"], after["version"]) == ("yolor", "1")
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] == 2
    keys = ("success", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
    for key in keys:
        assert isinstance(after["inference_stats"][key]["ns"], int), key
    for key in ("success", "queue", "compute_infer"):
        assert after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"] == 2, key
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    sizes = {b["batch_size"] for b in after["batch_stats"]}
    assert {1, 3} <= sizes
    assert {m["name"] for m in client.get_inference_statistics()["model_stats"]} == {"yolor", "yolor_image"}
