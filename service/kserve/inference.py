"""One v2 infer call, whatever the transport (HTTP or gRPC): which model it names, its tensors
checked against that model, and the run through the shared detector and batcher."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np

from service.core.batcher import DynamicBatcher
from service.core.detector import Detector, Disconnected
from service.core.errors import InvalidTensor, ServiceError, UnknownModel
from service.core.model import LoadedModel
from service.core.options import DetectParams
from service.core.repository import IMAGE_SUFFIX, RepositoryError, scan
from service.core.state import ServiceState
from service.kserve import models
from service.kserve.statistics import ModelStatistics, StatisticsBook
from service.kserve.tensors import InferRequest, Tensor, TensorError
from service.settings import Settings


@dataclass(frozen=True)
class Target:
    """What a v2 model name (and version) names: a model of the server's set, as the tensor model
    (its own name) or the image model (`<name>_image`)."""

    name: str  # as the request spells it
    kind: models.Kind
    model: str  # the model set's name
    version: int | None  # None: the newest loaded

    async def take(self, state: ServiceState) -> LoadedModel:
        """The loaded model a request holds: 503 unless ready, UnknownModel if not loaded (after
        loading it, with YOLOR_LOAD_ON_DEMAND)."""
        return await state.take(self.model, self.version)

    def loaded(self, state: ServiceState) -> LoadedModel:
        model = state.models.find(self.model, self.version)
        if model is None:
            raise _unknown(state, self.name, self.version)
        return model

    def served(self, state: ServiceState) -> models.Served:
        """The model as now served (metadata, config)."""
        loaded = self.loaded(state)
        return models.Served(self.name, self.kind, loaded.manifest, loaded.version, self.versions(state))

    def versions(self, state: ServiceState) -> list[int]:
        return state.models.versions(self.model)


def _unknown(state: ServiceState, name: str, version: object) -> UnknownModel:
    what = f"'{name}'" + (f" version {version}" if version not in (None, "") else "")
    return UnknownModel(f"Request for unknown model: {what} is not found; models: {state.models.listing()}")


def _loadable(state: ServiceState, name: str) -> bool:
    """A model of the repository that a request may load (YOLOR_LOAD_ON_DEMAND)."""
    root = state.settings.model_repository
    if not state.settings.load_on_demand or root is None:
        return False
    try:
        return scan(root).model(name) is not None
    except RepositoryError:
        return False


def target(state: ServiceState, name: str, version: str | None) -> Target:
    """The loaded model `name` and `version` (a string of digits; empty or None: the newest) name,
    or with YOLOR_LOAD_ON_DEMAND one of the repository's; UnknownModel (404, listing the models)
    when there is none."""
    image = name.endswith(IMAGE_SUFFIX)
    base, kind = (name.removesuffix(IMAGE_SUFFIX), "image") if image else (name, "tensor")
    number = int(version) if version and version.isascii() and version.isdigit() else None  # not "²"
    held = state.models.find(base, number) is not None
    if (version and number is None) or not (held or _loadable(state, base)):
        raise _unknown(state, name, version)
    return Target(name, cast(models.Kind, kind), base, number)


def config_json(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    """Triton's model configuration of `name` (and `version`), with the loaded model's batcher."""
    t = target(state, name, version)
    batcher = t.loaded(state).batcher
    return models.config(
        t.served(state),
        max_batch_size=max_batch(state.settings, batcher, t.kind),
        max_delay_s=batcher.max_delay_s,
    )


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


class Inferred(NamedTuple):
    version: int  # of the model that ran
    outputs: list[Tensor]


async def infer(
    state: ServiceState,
    book: StatisticsBook,
    at: Target,
    request: InferRequest,
    *,
    started: float,
    disconnected: Disconnected | None = None,
) -> Inferred:
    """The requested outputs (all when none was named), in the model's output order. The request
    takes the model `at` names once and holds it (a reload meanwhile retires it only afterwards):
    its tensors and batch limit are checked against that model. `at`: `target(...)`, resolved
    before the request's body is read."""
    loaded = await at.take(state)
    with loaded.use() as detector:
        model = models.Served(at.name, at.kind, loaded.manifest, loaded.version)
        limit = max_batch(state.settings, loaded.batcher, at.kind)
        stats = book.of(at.name, loaded.version)
        outputs = await _infer(
            stats, detector, model, request, limit, started=started, disconnected=disconnected
        )
        return Inferred(loaded.version, outputs)


async def _infer(
    stats: ModelStatistics,
    detector: Detector,
    model: models.Served,
    request: InferRequest,
    limit: int,
    *,
    started: float,
    disconnected: Disconnected | None,
) -> list[Tensor]:
    tensor = _input(request, model, limit)
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
    """Triton's statistics body: every loaded model and version, both variants (name None), or one
    model's loaded versions (one when `version` is given); UnknownModel if not loaded."""
    if name is None:
        names = [(n, m.version) for m in state.models for n in (m.name, m.name + IMAGE_SUFFIX)]
    else:
        at = target(state, name, version)
        names = [(name, v) for v in ([at.version] if at.version is not None else at.versions(state))]
    return {"model_stats": [book.of(n, v).to_json(n, str(v)) for n, v in names]}
