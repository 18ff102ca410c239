"""KServe v2 HTTP infer bodies, built and read by the real tritonclient (its static helpers: no server)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.kserve.tensors import (
    InferRequest,
    RequestedOutput,
    Tensor,
    TensorError,
    encode_infer_response,
    from_raw,
    parse_infer_request,
    to_raw,
)

pytestmark = pytest.mark.unit
http = pytest.importorskip("tritonclient.http")
tc_utils = pytest.importorskip("tritonclient.utils")

ARRAYS = {
    "FP32": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "FP16": np.linspace(-2, 2, 6, dtype=np.float16).reshape(3, 2),
    "INT64": np.array([[-(2**40), 3]], dtype=np.int64),
    "UINT8": np.arange(5, dtype=np.uint8),
    "BOOL": np.array([True, False, True]),
    "BYTES": np.array([b"\xff\xd8jpeg", b"", b"png"], dtype=object),
}


def client_body(arrays: dict[str, np.ndarray], binary: bool, **kwargs):
    inputs = []
    for name, array in arrays.items():
        tensor = http.InferInput(name, list(array.shape), tc_utils.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return http.InferenceServerClient.generate_request_body(inputs, **kwargs)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_reads_what_tritonclient_sends(binary):
    arrays = {k: v for k, v in ARRAYS.items() if binary or k not in ("BYTES", "FP16")}
    body, header_length = client_body(arrays, binary, request_id="req-7")
    assert (header_length is not None) == binary  # the client sends the header only with binary data
    request = parse_infer_request(body, header_length)
    assert request.id == "req-7"
    assert [t.name for t in request.inputs] == list(arrays)
    for tensor, (name, array) in zip(request.inputs, arrays.items(), strict=True):
        assert tensor.datatype == tc_utils.np_to_triton_dtype(array.dtype), name
        assert tensor.data.dtype == array.dtype and tensor.data.shape == array.shape, name
        assert (tensor.data == array).all(), name
    assert request.binary_output("anything")  # no outputs listed: the client asks for binary_data_output


def test_json_bytes_are_utf8_strings():
    body, header = client_body({"names": np.array(["é", "b"], dtype=object)}, binary=False)
    (tensor,) = parse_infer_request(body, header).inputs
    assert tensor.data.tolist() == ["é".encode(), b"b"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_reads_what_we_answer(binary):
    request = InferRequest(
        "abc", {}, [], [RequestedOutput("detections", binary), RequestedOutput("count", binary)]
    )
    detections = np.random.default_rng(0).random((2, 300, 6), dtype=np.float32)
    count = np.array([3, 0], dtype=np.int32)
    outputs = [Tensor("detections", "FP32", detections), Tensor("count", "INT32", count)]
    body, header = encode_infer_response("yolor", "1", request, outputs)
    assert (header is not None) == binary
    result = http.InferenceServerClient.parse_response_body(body, header_length=header)
    assert result.get_response()["id"] == "abc"
    assert result.get_response()["model_name"] == "yolor"
    np.testing.assert_array_equal(result.as_numpy("detections"), detections)
    np.testing.assert_array_equal(result.as_numpy("count"), count)


def test_per_output_choice_overrides_the_request_default():
    request = InferRequest("", {"binary_data_output": True}, [], [RequestedOutput("b", False)])
    body, header = encode_infer_response(
        "m",
        "1",
        request,
        [Tensor("a", "BYTES", np.array([b"x"], dtype=object)), Tensor("b", "FP32", np.ones(2))],
    )
    head = json.loads(body[:header])
    assert "id" not in head  # echoed only when the request had one
    a, b = head["outputs"]
    assert a["parameters"] == {"binary_data_size": 5} and "data" not in a
    assert b["data"] == [1.0, 1.0] and "parameters" not in b  # a JSON output carries no parameters
    assert body[header:] == b"\x01\x00\x00\x00x"


def test_raw_round_trip_and_bytes_layout():
    for datatype, array in ARRAYS.items():
        assert (from_raw(to_raw(array, datatype), datatype, array.shape, "t") == array).all(), datatype
    assert to_raw(np.array([b"ab", b""], dtype=object), "BYTES") == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def _json_body(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


GOOD = {"name": "images", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1]", None, "must be a JSON object"),
        (_json_body([]), None, "'inputs' must be a non-empty list"),
        (_json_body([{**GOOD, "datatype": "FP8"}]), None, "'FP8' is not a protocol datatype"),
        (_json_body([{**GOOD, "shape": [1, -2]}]), None, "negative dimension"),
        (_json_body([{**GOOD, "shape": "1x2"}]), None, "shape must be a list of integers"),
        (_json_body([{**GOOD, "data": [1, 2, 3]}]), None, "3 values for shape [1, 2]"),
        (_json_body([{**GOOD, "data": ["a", 2]}]), None, "not FP32"),
        (_json_body([{**GOOD, "datatype": "UINT8", "data": [1, 300]}]), None, "does not fit UINT8"),
        (_json_body([{k: v for k, v in GOOD.items() if k != "data"}]), None, "exactly one of 'data'"),
        (_json_body([{**GOOD, "parameters": {"binary_data_size": 8}}]), None, "exactly one of 'data'"),
        (_json_body([GOOD]), 10**6, "outside the body"),
        (_json_body([GOOD]) + b"junk", len(_json_body([GOOD])), "4 bytes after the JSON header"),
        (_json_body([GOOD], id=5), None, "id must be a string"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body, header, message):
    with pytest.raises(TensorError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_infer_request(body, header)


def test_binary_size_must_match_the_shape():
    head = _json_body(
        [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}]
    )
    with pytest.raises(TensorError, match="4 bytes of data, shape \\[2\\] of FP32 needs 8"):
        parse_infer_request(head + b"\x00" * 4, len(head))
    with pytest.raises(TensorError, match="runs past the end of the body"):
        parse_infer_request(head + b"\x00" * 2, len(head))
