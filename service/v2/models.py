"""What the KServe v2 endpoints say about the served model: metadata and Triton's model config.

The tensor model shows exactly the exported graph's tensors (what Triton serving our `model.onnx`
would show): input `images` FP32 [-1, 3, S, S], output `detections` (top-K head) or `predictions`
(raw head) with the manifest's shape, the batch axis as -1. One version, "1".
"""

from __future__ import annotations

from typing import Any

from service.manifest import ModelManifest

VERSION = "1"
PLATFORM = "onnxruntime_onnx"


def _dims(shape: list[int | str]) -> list[int]:
    """Manifest shape (named axes are strings) -> protocol dims (-1 for a variable axis)."""
    return [d if isinstance(d, int) else -1 for d in shape]


def input_shape(manifest: ModelManifest) -> list[int]:
    return [-1, 3, manifest.input_size, manifest.input_size]


def metadata(name: str, manifest: ModelManifest) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [VERSION],
        "platform": PLATFORM,
        "inputs": [{"name": manifest.input.name, "datatype": "FP32", "shape": input_shape(manifest)}],
        "outputs": [
            {"name": manifest.output.name, "datatype": "FP32", "shape": _dims(manifest.output.shape)}
        ],
    }


def config(name: str, manifest: ModelManifest, *, max_batch_size: int, max_delay_s: float) -> dict[str, Any]:
    """Triton's model configuration JSON (`GET /v2/models/{name}/config`): dims without the batch
    axis, the dynamic batcher our service runs."""
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": "",
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": manifest.input.name,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": input_shape(manifest)[1:],
            }
        ],
        "output": [
            {"name": manifest.output.name, "data_type": "TYPE_FP32", "dims": _dims(manifest.output.shape)[1:]}
        ],
        "dynamic_batching": {
            "preferred_batch_size": [max_batch_size],
            "max_queue_delay_microseconds": round(max_delay_s * 1e6),
        },
    }
