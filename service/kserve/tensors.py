"""Tensors of the KServe v2 protocol: datatypes, and the HTTP infer request and response bodies.

An HTTP infer body is a JSON object, optionally followed by raw tensor blobs (Triton's binary tensor
data extension): `Inference-Header-Content-Length` gives the JSON's byte length, each binary input
says its blob's size in `parameters.binary_data_size`, and the blobs follow in input order
(little-endian, row-major; a BYTES element is a 4-byte little-endian length and its bytes). A
response puts an output in binary when its request asked (`outputs[i].parameters.binary_data`, else
the request's `parameters.binary_data_output`), in JSON `data` otherwise (the protocol's default).

Everything wrong with a request raises `TensorError` with a message that names the tensor.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Protocol datatype -> numpy dtype (BYTES: an object array of `bytes`).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


class TensorError(ValueError):
    """A malformed infer request (HTTP 400, gRPC INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    data: np.ndarray  # shaped; BYTES: dtype object holding bytes
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's default


@dataclass(frozen=True)
class InferRequest:
    id: str
    parameters: Mapping[str, Any]
    inputs: list[Tensor]
    outputs: list[RequestedOutput]  # empty: every output of the model

    def binary_output(self, name: str) -> bool:
        """Whether output `name` goes back as a binary blob."""
        default = _flag(self.parameters.get("binary_data_output", False), "parameters.binary_data_output")
        for out in self.outputs:
            if out.name == name and out.binary is not None:
                return out.binary
        return default


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise TensorError(f"{where} must be true or false, got {value!r}")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TensorError(f"{where} must be a JSON object")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TensorError(f"{where} must be a string")
    return value


def parse_shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise TensorError(f"{where} must be a list of integers")
    if any(d < 0 for d in value):
        raise TensorError(f"{where} {value} has a negative dimension")
    return tuple(value)


def datatype_of(value: Any, where: str) -> np.dtype[Any]:
    name = _string(value, where)
    if name not in DATATYPES:
        raise TensorError(f"{where} {name!r} is not a protocol datatype ({', '.join(DATATYPES)})")
    return DATATYPES[name]


def from_raw(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A tensor from its raw little-endian bytes (BYTES: length-prefixed elements)."""
    count = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        items, offset, raw = [], 0, bytes(raw)
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise TensorError(f"{where}: truncated BYTES element length")
            (size,) = _LENGTH.unpack_from(raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise TensorError(f"{where}: a BYTES element runs past the end of its data")
            items.append(raw[offset : offset + size])
            offset += size
        if len(items) != count:
            raise TensorError(f"{where}: {len(items)} BYTES elements for shape {list(shape)}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")
    needed = count * dtype.itemsize
    if len(raw) != needed:
        what = f"shape {list(shape)} of {datatype}"
        raise TensorError(f"{where}: {len(raw)} bytes of data, {what} needs {needed}")
    return np.frombuffer(raw, dtype=dtype).astype(DATATYPES[datatype], copy=False).reshape(shape)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """The inverse of `from_raw`."""
    if datatype == "BYTES":
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype].newbyteorder("<")).tobytes()


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    flat = np.asarray(data, dtype=object).ravel() if isinstance(data, list) else None
    if flat is None:
        raise TensorError(f"{where}.data must be a list")
    count = int(np.prod(shape, dtype=np.int64))
    if flat.size != count:
        raise TensorError(f"{where}: {flat.size} values for shape {list(shape)}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise TensorError(f"{where}.data must hold strings for BYTES")
        out = np.empty(count, dtype=object)
        out[:] = [v.encode() for v in flat]
        return out.reshape(shape)
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in flat)
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat)
    if not ok:
        raise TensorError(f"{where}.data holds values that are not {datatype}")
    try:
        return np.asarray(flat.tolist(), dtype=DATATYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError) as e:
        raise TensorError(f"{where}.data does not fit {datatype}: {e}") from None


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """An HTTP infer body; `header_length` is `Inference-Header-Content-Length` (None: all JSON)."""
    if header_length is None:
        header_length = len(body)
    if not 0 <= header_length <= len(body):
        raise TensorError(f"{HEADER_LENGTH} {header_length} is outside the body's {len(body)} bytes")
    try:
        request = json.loads(body[:header_length])
    except (UnicodeDecodeError, ValueError) as e:
        raise TensorError(f"the infer request is not valid JSON: {e}") from None
    request = _object(request, "the infer request")
    blobs = memoryview(body)[header_length:]
    offset = 0
    inputs_json = request.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise TensorError("'inputs' must be a non-empty list")
    inputs = []
    for i, item in enumerate(inputs_json):
        item = _object(item, f"inputs[{i}]")
        name = _string(item.get("name"), f"inputs[{i}].name")
        where = f"input {name!r}"
        datatype = _string(item.get("datatype"), f"{where}: datatype")
        datatype_of(datatype, f"{where}: datatype")
        shape = parse_shape(item.get("shape"), f"{where}: shape")
        params = _object(item.get("parameters", {}), f"{where}: parameters")
        size = params.get("binary_data_size")
        if ("data" in item) == (size is not None):
            raise TensorError(f"{where} must have exactly one of 'data' and parameters.binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise TensorError(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(blobs):
                raise TensorError(f"{where}: binary_data_size {size} runs past the end of the body")
            data = from_raw(blobs[offset : offset + size], datatype, shape, where)
            offset += size
        else:
            data = _from_json(item["data"], datatype, shape, where)
        inputs.append(Tensor(name, datatype, data, params))
    if offset != len(blobs):
        raise TensorError(f"{len(blobs) - offset} bytes after the JSON header belong to no input")
    outputs = []
    for i, item in enumerate(request.get("outputs") or []):
        item = _object(item, f"outputs[{i}]")
        name = _string(item.get("name"), f"outputs[{i}].name")
        binary = _object(item.get("parameters", {}), f"output {name!r}: parameters").get("binary_data")
        outputs.append(RequestedOutput(name, None if binary is None else _flag(binary, f"output {name!r}")))
    request_id = request.get("id", "")
    return InferRequest(
        id=_string(request_id, "id"),
        parameters=_object(request.get("parameters", {}), "parameters"),
        inputs=inputs,
        outputs=outputs,
    )


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Sequence[Tensor],
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when every output went as JSON)."""
    entries, blobs = [], []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if request.binary_output(out.name):
            blob = to_raw(out.data, out.datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif out.datatype == "BYTES":
            entry["data"] = [bytes(v).decode("utf-8", "replace") for v in out.data.ravel()]
        else:
            entry["data"] = out.data.ravel().tolist()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id:
        response["id"] = request.id
    response["outputs"] = entries
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
