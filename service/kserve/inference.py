"""One v2 infer call, whatever the transport (HTTP or gRPC): which model it names, its tensors
checked against that model, and the run through the shared detector and batcher."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.core.batcher import DynamicBatcher
from service.core.detector import Detector, Disconnected
from service.core.errors import InvalidTensor, NotReady, ServiceError, UnknownModel
from service.core.options import DetectParams
from service.core.repository import IMAGE_SUFFIX
from service.core.state import ServiceState
from service.kserve import models
from service.kserve.statistics import StatisticsBook
from service.kserve.tensors import InferRequest, Tensor, TensorError
from service.settings import Settings


def model_kind(state: ServiceState, name: str, version: str | None) -> models.Kind:
    """Which of our two models `name` (and `version`) names; UnknownModel if neither."""
    base = state.settings.v2_model_name
    kinds: dict[str, models.Kind] = {base: "tensor", base + IMAGE_SUFFIX: "image"}
    if name not in kinds or version not in (None, "", models.VERSION):
        what = f"'{name}'" + (f" version {version}" if version else "")
        raise UnknownModel(f"Request for unknown model: {what} is not found")
    return kinds[name]


def served(state: ServiceState, name: str, version: str | None) -> models.Served:
    """The model `name` (and `version`) names, as now served (metadata, config); UnknownModel if
    none, NotReady before the manifest."""
    kind = model_kind(state, name, version)
    if state.manifest is None:
        raise NotReady(f"not ready: {state.readiness.why_not}")
    return models.Served(name, kind, state.manifest)


def max_batch(settings: Settings, batcher: DynamicBatcher, kind: models.Kind) -> int:
    """The tensor model: the batch of `batcher` (the model's); the image model: the per-request
    image limit."""
    return batcher.max_batch_size if kind == "tensor" else settings.max_images_per_request


def _input(request: InferRequest, model: models.Served, limit: int) -> Tensor:
    """The request's one input and requested outputs, checked against the model's metadata
    (datatype, shape with the batch axis, 1 <= batch <= limit)."""
    meta = models.metadata(model)
    ((expected, datatype, shape),) = [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]]
    names = [t.name for t in request.inputs]
    if names != [expected]:
        raise InvalidTensor(f"the model has one input, {expected!r}; got {names}")
    (tensor,) = request.inputs
    if tensor.datatype != datatype:
        raise InvalidTensor(f"input {expected!r} is {datatype}, got {tensor.datatype}")
    got = list(tensor.shape)
    fits = len(got) == len(shape) and all(s in (-1, g) for s, g in zip(shape[1:], got[1:], strict=True))
    if model.kind == "image" and len(got) == 1:  # one encoded image per row: [B] is [B, 1]
        fits = True
    if not fits:
        raise InvalidTensor(f"input {expected!r} has shape {shape}, got {got}")
    if not 1 <= got[0] <= limit:
        raise InvalidTensor(f"batch size {got[0]} is outside [1, {limit}] (max_batch_size)")
    outputs = [t["name"] for t in meta["outputs"]]
    for out in request.outputs:
        if out.name not in outputs:
            raise InvalidTensor(f"the model's outputs are {outputs}; got {out.name!r}")
    return tensor


async def infer(
    state: ServiceState,
    book: StatisticsBook,
    name: str,
    kind: models.Kind,
    request: InferRequest,
    *,
    started: float,
    disconnected: Disconnected | None = None,
) -> list[Tensor]:
    """The requested outputs (all when none was named), in the model's output order. The request
    takes the served model once and holds it (a reload meanwhile retires it only afterwards): its
    tensors and batch limit are checked against that model. `kind`: `model_kind(name)`, checked
    before the request's body is read."""
    loaded = state.current()
    with loaded.use() as detector:
        model = models.Served(name, kind, loaded.manifest)
        limit = max_batch(state.settings, loaded.batcher, kind)
        return await _infer(book, detector, model, request, limit, started=started, disconnected=disconnected)


async def _infer(
    book: StatisticsBook,
    detector: Detector,
    model: models.Served,
    request: InferRequest,
    limit: int,
    *,
    started: float,
    disconnected: Disconnected | None,
) -> list[Tensor]:
    tensor = _input(request, model, limit)
    stats = book.of(model.name)
    try:
        if model.kind == "tensor":
            images = np.ascontiguousarray(tensor.data, dtype=np.float32)
            ran = await detector.infer_tensors(list(images), started=started, disconnected=disconnected)
            array = np.stack([r.output for r in ran]).astype(np.float32, copy=False)
            outputs = [Tensor(model.manifest.output.name, "FP32", array)]
            stats.success(ran, time.monotonic() - started)
        else:
            try:
                options = models.ImageParameters.of(request.parameters)
                params = DetectParams.of(options, detector.manifest.class_names)
            except TensorError as e:
                raise InvalidTensor(str(e)) from None
            files = [bytes(item) for item in tensor.data.ravel()]
            outcome = await detector.detect(files, params, started=started, disconnected=disconnected)
            outputs = models.image_outputs([image.detections for image in outcome.images])
            ms = outcome.timing_ms
            stats.success(
                outcome.batches,
                time.monotonic() - started,
                input_s=ms["preprocess"] / 1000,
                output_s=ms["postprocess"] / 1000,
            )
    except ServiceError as e:
        if not isinstance(e, InvalidTensor):  # a bad request never reached the model
            stats.failure(time.monotonic() - started)
        raise
    wanted = {out.name for out in request.outputs}
    return [out for out in outputs if not wanted or out.name in wanted]


def statistics_json(
    state: ServiceState, book: StatisticsBook, name: str | None, version: str | None
) -> dict[str, Any]:
    """Triton's statistics body: every model (name None) or one (UnknownModel if not ours)."""
    base = state.settings.v2_model_name
    names = [base, base + IMAGE_SUFFIX] if name is None else [served(state, name, version).name]
    return {"model_stats": [book.of(n).to_json(n, models.VERSION) for n in names]}
