"""Trace an `ExportGraph` to ONNX with a dynamic batch axis, simplify it, and check it."""

from __future__ import annotations

import logging
import warnings
from collections import Counter

import onnx
import torch

from export.graph import ExportGraph
from service.processing.heads import head_layout

log = logging.getLogger(__name__)

INPUT_NAME = "images"
# Node types the deploy graph must not contain: in-place slice writes become ScatterND (slow, badly
# supported by TensorRT); BatchNormalization means fusion did not happen.
FORBIDDEN_OPS = frozenset({"ScatterND", "BatchNormalization"})
MIN_OPSET = 17
TRACE_BATCH = 2  # torch.export specialises size-1 dims, so trace with 2; validation runs 1 and 3


class OnnxExportError(RuntimeError):
    pass


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def to_onnx(graph: ExportGraph, img_size: int, opset: int = 18) -> onnx.ModelProto:
    """Trace with the torch.export-based exporter; returns a checked, simplified ModelProto whose
    input `images` is (batch, 3, S, S) float32 and whose single output is named after the head."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}")
    example = torch.rand(TRACE_BATCH, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about its own internals (deprecations in torch.export); the result is
        # checked numerically right after, so those warnings carry no information for users.
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            graph.eval(),
            (example,),
            input_names=[INPUT_NAME],
            output_names=[head_layout(graph.head).output_name],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"images": {0: batch}},
            external_data=False,
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise OnnxExportError("torch.onnx.export returned no program")
    model = simplify(program.model_proto)
    _name_batch_axes(model)
    check_graph(model)
    return model


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding, dead-node removal, shape inference."""
    import onnxslim

    before = len(model.graph.node)
    slim = onnxslim.slim(model)
    if not isinstance(slim, onnx.ModelProto):
        raise OnnxExportError("onnxslim returned no model")
    log.debug("onnxslim: %d -> %d nodes", before, len(slim.graph.node))
    return slim


def _name_batch_axes(model: onnx.ModelProto) -> None:
    """Name the first axis of the input and output `batch` (TensorRT profiles and tools read it)."""
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"


def check_graph(model: onnx.ModelProto) -> None:
    """onnx.checker (full check, with shape inference) plus our own deploy-graph rules."""
    onnx.checker.check_model(model, full_check=True)
    bad = FORBIDDEN_OPS & set(op_counts(model))
    if bad:
        raise OnnxExportError(f"exported graph contains forbidden node types: {sorted(bad)}")
    if len(model.graph.input) != 1 or model.graph.input[0].name != INPUT_NAME:
        raise OnnxExportError(f"graph must have one input named {INPUT_NAME!r}")
    if len(model.graph.output) != 1:
        raise OnnxExportError("graph must have one output")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        raise OnnxExportError(f"graph opset {opset} < {MIN_OPSET}")


def output_shape(model: onnx.ModelProto) -> list[int | str]:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]
