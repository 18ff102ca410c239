"""The two v2 models of each model the server holds, and what they say about them (metadata, Triton's
model config). Versions are the model set's (a model folder alone is version "1").

- `{name}` (the tensor model) shows exactly the exported graph's tensors (what Triton serving our
  `model.onnx` would show): input `images` FP32 [-1, 3, S, S], output `detections` (top-K head) or
  `predictions` (raw head) with the manifest's shape, the batch axis as -1.
- `{name}_image` is `/detect` over v2: input `images`, BYTES [-1, 1], one encoded image per row;
  request parameters `conf`, `iou`, `max_det`, `classes` (ids or names, comma-separated), `agnostic`,
  and sliced inference's `tile` (true, false or "auto"), `tile_size`, `tile_overlap`, `tile_merge`;
  outputs `boxes` FP32 [-1, -1, 4] (x1, y1, x2, y2 in original-image pixels), `scores` FP32 [-1, -1],
  `class_ids` INT32 [-1, -1] and `count` INT32 [-1]: row i's first count[i] detections are real,
  the rest zero padding up to the request's largest count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, ValidationError

from service.core.options import DetectFields, DetectOptions
from service.kserve.tensors import Tensor, TensorError
from service.manifest import ModelManifest
from service.processing import Detections

PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "yolor-serving"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]
IMAGE_OUTPUTS = {"boxes": ("FP32", [-1, -1, 4]), "scores": ("FP32", [-1, -1])}
IMAGE_OUTPUTS |= {"class_ids": ("INT32", [-1, -1]), "count": ("INT32", [-1])}

Kind = Literal["tensor", "image"]


@dataclass(frozen=True)
class Served:
    name: str
    kind: Kind
    manifest: ModelManifest
    version: int = 1  # the one loaded model this is
    versions: list[int] = field(default_factory=list)  # every loaded version of the model (metadata)


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "0"


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}


def _dims(shape: list[int | str]) -> list[int]:
    """Manifest shape (named axes are strings) -> protocol dims (-1 for a variable axis)."""
    return [d if isinstance(d, int) else -1 for d in shape]


def input_shape(manifest: ModelManifest) -> list[int]:
    return [-1, 3, manifest.input_size, manifest.input_size]


def _tensors(served: Served) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(inputs, outputs) as (name, datatype, shape with the batch axis)."""
    m = served.manifest
    if served.kind == "image":
        outputs = [(name, dtype, shape) for name, (dtype, shape) in IMAGE_OUTPUTS.items()]
        return [(m.input.name, "BYTES", [-1, 1])], outputs
    return [(m.input.name, "FP32", input_shape(m))], [(m.output.name, "FP32", _dims(m.output.shape))]


def metadata(served: Served) -> dict[str, Any]:
    inputs, outputs = _tensors(served)
    return {
        "name": served.name,
        "versions": [str(v) for v in served.versions or [served.version]],
        "platform": PLATFORM if served.kind == "tensor" else "yolor-serving",
        "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in outputs],
    }


def _config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def config(served: Served, *, max_batch_size: int, max_delay_s: float) -> dict[str, Any]:
    """Triton's model configuration JSON (`GET /v2/models/{name}/config`): dims without the batch
    axis, the dynamic batcher our service runs (the image model: the per-request image limit)."""
    inputs, outputs = _tensors(served)
    return {
        "name": served.name,
        "platform": PLATFORM if served.kind == "tensor" else "yolor-serving",
        "backend": "",
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": n,
                "data_type": _config_type(d),
                "format": "FORMAT_NCHW" if served.kind == "tensor" else "FORMAT_NONE",
                "dims": s[1:],
            }
            for n, d, s in inputs
        ],
        "output": [{"name": n, "data_type": _config_type(d), "dims": s[1:]} for n, d, s in outputs],
        "dynamic_batching": {
            "preferred_batch_size": [max_batch_size],
            "max_queue_delay_microseconds": round(max_delay_s * 1e6),
        },
    }


class ImageParameters(DetectFields):
    """The image model's request parameters (others, like `binary_data_output`, are the protocol's)."""

    model_config = ConfigDict(extra="ignore")
    classes: str | None = None
    tile: bool | str = False

    @classmethod
    def of(cls, parameters: Mapping[str, Any]) -> DetectOptions:
        """The request's parameters as DetectOptions; TensorError (a 400) when they do not validate."""
        try:
            return cls.model_validate(dict(parameters)).options()
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise TensorError(f"parameters: {problems}") from None


def image_outputs(per_image: list[Detections]) -> list[Tensor]:
    """The image model's outputs, zero-padded to the largest detection count."""
    n, width = len(per_image), max((len(d.scores) for d in per_image), default=0)
    boxes = np.zeros((n, width, 4), np.float32)
    scores = np.zeros((n, width), np.float32)
    class_ids = np.zeros((n, width), np.int32)
    count = np.zeros(n, np.int32)
    for i, d in enumerate(per_image):
        k = count[i] = len(d.scores)
        boxes[i, :k], scores[i, :k], class_ids[i, :k] = d.boxes, d.scores, d.class_ids
    arrays = {"boxes": boxes, "scores": scores, "class_ids": class_ids, "count": count}
    return [Tensor(name, IMAGE_OUTPUTS[name][0], arrays[name]) for name in IMAGE_OUTPUTS]
