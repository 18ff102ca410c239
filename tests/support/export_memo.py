"""The ONNX trace of a graph made once per test module: `torch.onnx.export` of the same weights and
options is deterministic and takes seconds, and several tests export the same checkpoint through the
whole pipeline (what they test is what the pipeline does with the trace)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


def _key(graph: Any, img_size: int, opset: int) -> str:
    digest = hashlib.sha256(repr((type(graph).__name__, graph.head, graph.top_k, img_size, opset)).encode())
    for name, tensor in graph.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def memoized_to_onnx(patch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Within the block, the pipeline's `to_onnx` traces each distinct graph once and returns copies;
    yields {"traced": n, "reused": m}."""
    import onnx

    import export.pipeline

    trace = export.pipeline.to_onnx
    made: dict[str, onnx.ModelProto] = {}
    counts = {"traced": 0, "reused": 0}

    def to_onnx(graph: Any, img_size: int, opset: int = 18) -> onnx.ModelProto:
        key = _key(graph, img_size, opset)
        if key in made:
            counts["reused"] += 1
        else:
            made[key] = trace(graph, img_size, opset)
            counts["traced"] += 1
        copy = onnx.ModelProto()
        copy.CopyFrom(made[key])
        return copy

    patch.setattr(export.pipeline, "to_onnx", to_onnx)
    yield counts
