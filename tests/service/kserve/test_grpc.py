"""KServe v2 over gRPC, driven by Triton's own gRPC client against the real app (ONNX Runtime on the
tiny exported graph), and our .proto checked field by field against the one tritonclient ships."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest

from service.kserve.messages import messages
from tests.support.app import encode, serving, solid, tiny_onnx_app, wait_for
from tests.support.model_files import INPUT_SIZE, MAX_BATCH, TOP_K

pytestmark = [pytest.mark.api]
grpcclient = pytest.importorskip("tritonclient.grpc")
utils = pytest.importorskip("tritonclient.utils")
S = INPUT_SIZE
KEY = "grpc-test-key-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = tiny_onnx_app(tmp_path_factory.mktemp("v2-grpc"), grpc_port=0, api_keys=[KEY])
    with serving(app) as url:
        port = app.state.grpc.port
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        wait_for(client.is_server_ready, "the server never became ready")
        yield client, app.state.service.settings.model_dir, url
        client.close()


AUTH = {"x-api-key": KEY}


def test_descriptor_is_compiled_from_the_proto():
    pytest.importorskip("grpc_tools")
    from tools.make_proto import DESCRIPTOR, compile_descriptor

    assert compile_descriptor() == DESCRIPTOR.read_bytes(), "run python tools/make_proto.py"


def _fields(descriptor) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}


def test_every_field_matches_tritonclient():
    """Names, numbers, types and labels of each of our messages (nested included) equal Triton's:
    what makes the two sides read each other's bytes."""
    from tritonclient.grpc import model_config_pb2, service_pb2

    def theirs(name: str):
        for module in (service_pb2, model_config_pb2):
            if name in module.DESCRIPTOR.message_types_by_name:
                return module.DESCRIPTOR.message_types_by_name[name]
        raise AssertionError(f"Triton has no message {name}")

    checked = 0
    stack = [(cls.DESCRIPTOR, theirs(name)) for name, cls in messages().items()]
    while stack:
        ours, triton = stack.pop()
        mine, other = _fields(ours), _fields(triton)
        assert set(mine) <= set(other), f"{ours.full_name}: {set(mine) - set(other)} not in Triton's"
        for field, spec in mine.items():
            assert spec == other[field], f"{ours.full_name}.{field}: {spec} != {other[field]}"
            checked += 1
        for nested in ours.nested_types:
            if not nested.GetOptions().map_entry:
                stack.append((nested, triton.nested_types_by_name[nested.name]))
    assert checked > 60
    ours_enum = messages()["ModelInput"].DESCRIPTOR.fields_by_name["data_type"].enum_type
    assert {v.name: v.number for v in ours_enum.values} == {
        v.name: v.number for v in model_config_pb2.DataType.DESCRIPTOR.values
    }


def test_health_metadata_config(server):
    client, _, _ = server
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("yolor", headers=AUTH)
    meta = client.get_model_metadata("yolor", headers=AUTH, as_json=True)
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": ["-1", "3", str(S), str(S)]}]
    assert meta["outputs"][0]["name"] == "detections"
    config = client.get_model_config("yolor", headers=AUTH, as_json=True)["config"]
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"][0]["data_type"] == "TYPE_FP32" and config["input"][0]["dims"] == [
        "3",
        str(S),
        str(S),
    ]
    assert "binary_tensor_data" in client.get_server_metadata().extensions


@pytest.mark.parametrize("batch_size", [1, 3])
def test_infer_equals_the_onnx_run_directly(server, batch_size):
    client, model_dir, _ = server
    batch = np.random.default_rng(batch_size).random((batch_size, 3, S, S), dtype=np.float32)
    tensor = grpcclient.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("yolor", [tensor], request_id="g1", headers=AUTH)
    assert result.get_response().id == "g1"
    got = result.as_numpy("detections")
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert got.shape == (batch_size, TOP_K, 6)
    np.testing.assert_allclose(got, session.run(None, {"images": batch})[0], atol=1e-5, rtol=0)


def test_image_model_equals_http(server):
    import tritonclient.http as httpclient

    client, _, url = server
    photos = [encode(solid(40, 64, (250, 10, 10))), encode(solid(50, 50, (90, 10, 200)), ".jpg")]
    params = {"conf": "0.05", "max_det": 3}  # tritonclient < 2.50 sends no float parameters over gRPC
    answers = []
    http_c = httpclient.InferenceServerClient(url[7:])
    for module, c in ((grpcclient, client), (httpclient, http_c)):
        tensor = module.InferInput("images", [2, 1], "BYTES")
        tensor.set_data_from_numpy(np.array(photos, dtype=object).reshape(2, 1))
        result = c.infer("yolor_image", [tensor], parameters=params, headers=dict(AUTH))  # http adds to it
        answers.append({n: result.as_numpy(n) for n in ("boxes", "scores", "class_ids", "count")})
    http_c.close()
    assert answers[0]["count"].sum() > 0
    for name in answers[0]:
        np.testing.assert_array_equal(answers[0][name], answers[1][name])


@pytest.mark.parametrize(
    ("model", "shape", "headers", "code", "message"),
    [
        ("yolor", [1, 3, S, S // 2], AUTH, "StatusCode.INVALID_ARGUMENT", "has shape"),
        ("yolor", [MAX_BATCH + 1, 3, S, S], AUTH, "StatusCode.INVALID_ARGUMENT", "outside [1, 4]"),
        ("nope", [1, 3, S, S], AUTH, "StatusCode.NOT_FOUND", "unknown model: 'nope'"),
        ("yolor", [1, 3, S, S], {}, "StatusCode.UNAUTHENTICATED", "API key is required"),
        ("yolor", [1, 3, S, S], {"x-api-key": "wrong"}, "StatusCode.PERMISSION_DENIED", "invalid API key"),
    ],
)
def test_errors_are_grpc_statuses(server, model, shape, headers, code, message):
    client, _, _ = server
    tensor = grpcclient.InferInput("images", shape, "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, np.float32))
    with pytest.raises(utils.InferenceServerException) as caught:
        client.infer(model, [tensor], headers=headers)
    assert caught.value.status() == code
    assert message in caught.value.message()


# The key rule of every transport (service.core.auth.presented_key): Bearer in any case first, then x-api-key.
SAME_AS_HTTP = [
    ({"authorization": f"Bearer {KEY}"}, "ok"),
    ({"authorization": f"bearer {KEY}"}, "ok"),  # was PERMISSION_DENIED: "Bearer " was cut case-sensitively
    ({"authorization": f"Bearer {KEY}", "x-api-key": "wrong"}, "ok"),  # was x-api-key first
    ({"authorization": "Basic abc", "x-api-key": KEY}, "ok"),
    ({"authorization": "Bearer wrong"}, "StatusCode.PERMISSION_DENIED"),
    ({"authorization": "Basic abc"}, "StatusCode.UNAUTHENTICATED"),
]


@pytest.mark.parametrize(("headers", "answer"), SAME_AS_HTTP)
def test_api_keys_are_read_as_over_http(server, headers, answer):
    import httpx

    client, _, url = server
    tensor = grpcclient.InferInput("images", [1, 3, S, S], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, S, S), np.float32))
    try:
        client.infer("yolor", [tensor], headers=headers)
        got = "ok"
    except utils.InferenceServerException as e:
        got = e.status()
    http_status = httpx.get(f"{url}/v2/models/yolor", headers=headers).status_code
    assert got == answer
    assert (
        http_status
        == {"ok": 200, "StatusCode.PERMISSION_DENIED": 403, "StatusCode.UNAUTHENTICATED": 401}[got]
    )


def test_statistics_over_grpc(server):
    client, _, _ = server
    before = client.get_inference_statistics("yolor", headers=AUTH).model_stats[0].inference_count
    tensor = grpcclient.InferInput("images", [2, 3, S, S], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 3, S, S), np.float32))
    client.infer("yolor", [tensor], headers=AUTH)
    stats = client.get_inference_statistics("yolor", headers=AUTH).model_stats[0]
    assert stats.inference_count - before == 2 and stats.inference_stats.success.count >= 1


def test_overload_and_deadline_are_those_of_detect(tmp_path):
    """Queue full: HTTP 503 and gRPC UNAVAILABLE; past the request deadline: 504, as /detect."""
    import gevent
    import tritonclient.http as httpclient

    from tests.support.app import Gate, fake_app, topk_rows

    gate = Gate(topk_rows([[2, 2, 12, 12, 0.9, 0]]))
    app, _ = fake_app(
        tmp_path,
        gate,
        warmup=False,
        grpc_port=0,
        queue_size=1,
        max_images_per_request=1,
        max_batch_size=1,
        request_timeout_s=1.0,
    )
    batch = np.zeros((1, 3, S, S), np.float32)

    def grpc_input():
        tensor = grpcclient.InferInput("images", [1, 3, S, S], "FP32")
        tensor.set_data_from_numpy(batch)
        return tensor

    with serving(app) as url:
        state = app.state.service
        grpc_c = grpcclient.InferenceServerClient(f"127.0.0.1:{app.state.grpc.port}")
        http_c = httpclient.InferenceServerClient(url[7:], concurrency=2)
        tensor = httpclient.InferInput("images", [1, 3, S, S], "FP32")
        tensor.set_data_from_numpy(batch)
        running = http_c.async_infer("yolor", [tensor])  # held in the backend by the gate
        queued = http_c.async_infer("yolor", [tensor])  # fills the queue of 1
        give_up = time.monotonic() + 10
        while not (gate.entered.is_set() and state.batcher.waiting == 1):
            assert time.monotonic() < give_up
            gevent.sleep(0.01)
        other = httpclient.InferenceServerClient(url[7:])
        with pytest.raises(utils.InferenceServerException) as over_http:
            other.infer("yolor", [tensor])
        other.close()
        with pytest.raises(utils.InferenceServerException) as over_grpc:
            grpc_c.infer("yolor", [grpc_input()])
        for pending in (running, queued):  # the gate outlasts their 1 s deadline
            with pytest.raises(utils.InferenceServerException) as late:
                pending.get_result()
            assert late.value.status() == "504"
        gate.release.set()
        http_c.close()
        grpc_c.close()
    assert over_http.value.status() == "503" and "queue full" in over_http.value.message()
    assert over_grpc.value.status() == "StatusCode.UNAVAILABLE" and "queue full" in over_grpc.value.message()
