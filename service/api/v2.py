"""KServe v2 / Open Inference Protocol over HTTP (Triton-compatible): health, metadata, Triton's
model config, and infer on the two models of `service.v2.models` (`YOLOR_V2_MODEL_NAME`, default
`yolor`, and `yolor_image`).

Infer requests go through the same batcher, queue limit, deadline, API keys and body limit as
`/detect`; errors come back as the protocol's `{"error": "..."}` with the same statuses
(`service.errors`). One version ("1"); a request for another version is a 404, as an unknown model.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.api.deps import DetectorDep, DisconnectedDep, StateDep, require_api_key
from service.errors import InvalidTensor, NotReady, UnknownModel
from service.state import ServiceState
from service.v2 import models
from service.v2.tensors import (
    HEADER_LENGTH,
    InferRequest,
    Tensor,
    TensorError,
    encode_infer_response,
    parse_infer_request,
)

router = APIRouter(prefix="/v2", tags=["kserve-v2"], include_in_schema=True)
EXTENSIONS = ["binary_tensor_data", "model_configuration"]


def _server_version() -> str:
    try:
        return package_version("yolor-serving")
    except PackageNotFoundError:
        return "0"


def _served(state: ServiceState, name: str, version: str | None) -> models.Served:
    """The model `name` (and `version`) names; UnknownModel if none."""
    base = state.settings.v2_model_name
    kinds: dict[str, models.Kind] = {base: "tensor", base + models.IMAGE_SUFFIX: "image"}
    if name not in kinds or version not in (None, "", models.VERSION):
        what = f"'{name}'" + (f" version {version}" if version else "")
        raise UnknownModel(f"Request for unknown model: {what} is not found")
    if state.manifest is None:
        raise NotReady(f"not ready: {state.not_ready_reason}")
    return models.Served(name, kinds[name], state.manifest)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(state: StateDep) -> dict[str, bool]:
    state.raise_unless_ready()
    return {"ready": True}


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "yolor-serving", "version": _server_version(), "extensions": EXTENSIONS}


@router.get("/models/{name}", dependencies=[Depends(require_api_key)])
@router.get("/models/{name}/versions/{version}", dependencies=[Depends(require_api_key)])
async def model_metadata(state: StateDep, name: str, version: str | None = None) -> dict[str, Any]:
    return models.metadata(_served(state, name, version))


@router.get("/models/{name}/ready", dependencies=[Depends(require_api_key)])
@router.get("/models/{name}/versions/{version}/ready", dependencies=[Depends(require_api_key)])
async def model_ready(state: StateDep, name: str, version: str | None = None) -> dict[str, Any]:
    _served(state, name, version)
    state.raise_unless_ready()
    return {"name": name, "ready": True}


@router.get("/models/{name}/config", dependencies=[Depends(require_api_key)])
@router.get("/models/{name}/versions/{version}/config", dependencies=[Depends(require_api_key)])
async def model_config(state: StateDep, name: str, version: str | None = None) -> dict[str, Any]:
    served = _served(state, name, version)
    assert state.batcher is not None  # a manifest is set together with its batcher
    limit = state.batcher.max_batch_size if served.kind == "tensor" else state.settings.max_images_per_request
    return models.config(served, max_batch_size=limit, max_delay_s=state.batcher.max_delay_s)


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidTensor(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None


def _input(infer: InferRequest, served: models.Served, max_batch: int) -> Tensor:
    """The request's one input and requested outputs, checked against the model's metadata
    (datatype, shape with the batch axis, 1 <= batch <= max_batch)."""
    meta = models.metadata(served)
    ((expected, datatype, shape),) = [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]]
    names = [t.name for t in infer.inputs]
    if names != [expected]:
        raise InvalidTensor(f"the model has one input, {expected!r}; got {names}")
    (tensor,) = infer.inputs
    if tensor.datatype != datatype:
        raise InvalidTensor(f"input {expected!r} is {datatype}, got {tensor.datatype}")
    got = list(tensor.shape)
    fits = len(got) == len(shape) and all(s in (-1, g) for s, g in zip(shape[1:], got[1:], strict=True))
    if served.kind == "image" and len(got) == 1:  # one encoded image per row: [B] is [B, 1]
        fits = True
    if not fits:
        raise InvalidTensor(f"input {expected!r} has shape {shape}, got {got}")
    if not 1 <= got[0] <= max_batch:
        raise InvalidTensor(f"batch size {got[0]} is outside [1, {max_batch}] (max_batch_size)")
    outputs = [t["name"] for t in meta["outputs"]]
    for out in infer.outputs:
        if out.name not in outputs:
            raise InvalidTensor(f"the model's outputs are {outputs}; got {out.name!r}")
    return tensor


@router.post("/models/{name}/infer", dependencies=[Depends(require_api_key)])
@router.post("/models/{name}/versions/{version}/infer", dependencies=[Depends(require_api_key)])
async def infer(
    request: Request,
    state: StateDep,
    detector: DetectorDep,
    disconnected: DisconnectedDep,
    name: str,
    version: str | None = None,
) -> Response:
    """Infer on the exported graph's tensors; the rows of a batch go through the dynamic batcher."""
    started = time.monotonic()
    served = _served(state, name, version)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise InvalidTensor(f"Content-Encoding {encoding!r} is not supported (send identity)")
    body = await request.body()
    try:
        parsed = parse_infer_request(body, _header_length(request))
    except TensorError as e:
        raise InvalidTensor(str(e)) from None
    if served.kind == "tensor":
        tensor = _input(parsed, served, detector.batcher.max_batch_size)
        images = np.ascontiguousarray(tensor.data, dtype=np.float32)
        rows = await detector.infer_tensors(list(images), started=started, disconnected=disconnected)
        array = np.stack(rows).astype(np.float32, copy=False)
        outputs = [Tensor(served.manifest.output.name, "FP32", array)]
    else:
        tensor = _input(parsed, served, state.settings.max_images_per_request)
        try:
            params = detector.params(**models.ImageParameters.of(parsed.parameters).detect_kwargs())
        except TensorError as e:
            raise InvalidTensor(str(e)) from None
        files = [bytes(item) for item in tensor.data.ravel()]
        outcome = await detector.detect(files, params, started=started, disconnected=disconnected)
        outputs = models.image_outputs([image.detections for image in outcome.images])
    wanted = {out.name for out in parsed.outputs}
    outputs = [out for out in outputs if not wanted or out.name in wanted]
    content, header_length = encode_infer_response(name, models.VERSION, parsed, outputs)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
    )
