"""Model directories for tests: a `model.json` (service.manifest) and a tiny deterministic ONNX graph."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from service.manifest import Artifact, ModelManifest, OutputSpec
from service.processing.heads import TOPK_COLUMNS

CLASS_NAMES = ["person", "car", "dog"]
INPUT_SIZE = 64
TOP_K = 4
MAX_BATCH = 4

# The tiny graph's candidate rows: fixed boxes (letterboxed-input pixels) and class ids; row k's
# score is a weighted channel mean of the input: scores = mean_hw(images) @ SCORE_WEIGHTS.
TINY_BOXES = np.array([[8, 8, 32, 32], [10, 10, 34, 34], [36, 36, 60, 60], [4, 40, 28, 60]], np.float32)
TINY_CLASSES = np.array([0, 0, 1, 2], np.float32)
SCORE_WEIGHTS = np.array([[1.0, 0.9, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], np.float32)


def tiny_reference(batch: np.ndarray) -> np.ndarray:
    """What the tiny ONNX graph computes, in numpy: (B, 3, S, S) -> (B, TOP_K, 6)."""
    scores = batch.mean(axis=(2, 3)) @ SCORE_WEIGHTS
    out = np.zeros((len(batch), TOP_K, 6), np.float32)
    out[:, :, :4] = TINY_BOXES
    out[:, :, 4] = scores
    out[:, :, 5] = TINY_CLASSES
    return out


def write_tiny_onnx(path: Path) -> None:
    """images [batch, 3, 64, 64] float32 -> detections [batch, 4, 6] float32 (see tiny_reference)."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    def const(name: str, value: np.ndarray) -> object:
        return numpy_helper.from_array(value, name)

    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "weights"], ["scores"]),
        helper.make_node("Unsqueeze", ["scores", "axis2"], ["scores3"]),
        helper.make_node("Mul", ["scores3", "zero"], ["zeros3"]),
        helper.make_node("Add", ["zeros3", "boxes"], ["boxes3"]),
        helper.make_node("Add", ["zeros3", "classes"], ["classes3"]),
        helper.make_node("Concat", ["boxes3", "scores3", "classes3"], ["detections"], axis=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-topk",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", TOP_K, 6])],
        initializer=[
            const("weights", SCORE_WEIGHTS),
            const("axis2", np.array([2], np.int64)),
            const("zero", np.zeros(1, np.float32)),
            const("boxes", TINY_BOXES),
            const("classes", TINY_CLASSES[:, None]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    save(model, str(path))


def write_model_dir(
    directory: Path,
    *,
    head: str = "topk",
    onnx: bool = False,
    max_batch: int = MAX_BATCH,
    input_size: int = INPUT_SIZE,
    raw_rows: int = 12,
) -> ModelManifest:
    """`directory/model.json` for a 3-class model; with `onnx`, the tiny ONNX graph as `model.onnx`.

    Without `onnx` the artifact is a placeholder file: enough for tests with a fake backend.
    """
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / "model.onnx"
    if onnx:
        write_tiny_onnx(onnx_path)
    else:
        onnx_path.write_bytes(b"placeholder: tests with a fake backend never read it")
    data = onnx_path.read_bytes()
    if head == "topk":
        output = OutputSpec(name="detections", shape=["batch", TOP_K, 6], columns=list(TOPK_COLUMNS))
    else:
        columns = ["cx", "cy", "w", "h", "obj", *CLASS_NAMES]
        output = OutputSpec(
            name="predictions", shape=["batch", raw_rows, 5 + len(CLASS_NAMES)], columns=columns
        )
    manifest = ModelManifest(
        arch="tiny-test",
        branch="main",
        nc=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        input_size=input_size,
        strides=[8, 16, 32],
        anchors=[[[10.0, 13.0]], [[30.0, 61.0]], [[116.0, 90.0]]],
        head=head,  # type: ignore[arg-type]
        top_k=TOP_K if head == "topk" else None,
        output=output,
        max_batch=max_batch,
        artifacts={
            "onnx": Artifact(
                file="model.onnx", sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), precision="fp32"
            )
        },
    )
    manifest.write(directory)
    return manifest
