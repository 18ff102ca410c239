"""yolor export: ONNX graphs equal PyTorch, heads are what they claim, manifests are complete."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import yolor
from export.onnx_export import FORBIDDEN_OPS, op_counts
from service.backends.artifacts import sha256_file
from service.manifest import load_manifest

pytestmark = [pytest.mark.export, pytest.mark.slow]


def run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


def reference(checkpoint, x: np.ndarray) -> np.ndarray:
    model = yolor.load_model(checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def brute_force_candidates(pred: np.ndarray) -> np.ndarray:
    """Row by row: best class (first on ties), score = obj * cls, box xywh -> xyxy. (B, N, 6)."""
    out = []
    for img in pred.astype(np.float64):
        rows = []
        for cx, cy, w, h, obj, *cls in img:
            c = int(np.argmax(cls))
            rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, obj * cls[c], c])
        out.append(rows)
    return np.asarray(out)


def assert_is_topk(topk: np.ndarray, candidates: np.ndarray) -> None:
    """topk rows are the k best candidates: scores equal the k highest in order, and each row is a
    distinct candidate row (rows with equal scores may come in any order)."""
    k = topk.shape[0]
    best = np.sort(candidates[:, 4])[::-1][:k]
    np.testing.assert_allclose(topk[:, 4], best, rtol=1e-5, atol=1e-7)
    used = np.zeros(len(candidates), dtype=bool)
    for row in topk:
        close = (
            ~used
            & (candidates[:, 5] == row[5])
            & np.isclose(candidates[:, 4], row[4], rtol=1e-5, atol=1e-7)
            & np.isclose(candidates[:, :4], row[:4], rtol=1e-5, atol=1e-3).all(1)
        )
        assert close.any(), f"row {row} is not a candidate"
        used[np.argmax(close)] = True


@pytest.mark.parametrize("batch", [1, 3])
def test_raw_head_equals_pytorch_at_any_batch(checkpoint, exported, batch):
    manifest = load_manifest(exported["raw"])
    s = manifest.input_size
    x = np.random.default_rng(batch).random((batch, 3, s, s), dtype=np.float32)
    got, want = run(exported["raw"] / "model.onnx", x), reference(checkpoint, x)
    assert got.shape == want.shape == (batch, *manifest.output.shape[1:])
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_topk_head_equals_numpy_topk_of_raw_head(exported):
    size = load_manifest(exported["raw"]).input_size
    x = np.random.default_rng(7).random((3, 3, size, size), dtype=np.float32)
    raw = run(exported["raw"] / "model.onnx", x)
    topk = run(exported["topk"] / "model.onnx", x)
    assert topk.shape == (3, 100, 6)
    assert (np.diff(topk[..., 4], axis=1) <= 0).all()  # sorted by score
    for img_topk, img_candidates in zip(topk, brute_force_candidates(raw), strict=True):
        assert_is_topk(img_topk, img_candidates)


@pytest.mark.parametrize("head", ["topk", "raw"])
def test_graph_is_a_deploy_graph(checkpoint, exported, head):
    model = onnx.load(exported[head] / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert not FORBIDDEN_OPS & set(op_counts(model))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    # The implicit vectors are folded: none of them survives as a constant in the graph.
    implicit = [
        p.detach().numpy().ravel()
        for n, p in yolor.load_model(checkpoint).named_parameters()
        if n.endswith("implicit")
    ]
    consts = [onnx.numpy_helper.to_array(t).ravel() for t in model.graph.initializer]
    for vec in implicit:
        assert not any(c.shape == vec.shape and np.allclose(c, vec) for c in consts)


# Every node type the exporter emitted for the ReOrg nets before the YOLOR-S4 stems (ReOrg x 3, Haar
# wavelet) came in: those are slices and arithmetic, and must not need anything new from a runtime.
DEPLOY_OPS = {
    *("Conv", "Sigmoid", "Mul", "Add", "Sub", "Div", "Pow", "Concat", "Slice", "MaxPool", "Resize"),
    *("Reshape", "Transpose", "Unsqueeze", "Expand", "Cast", "Gather", "GatherElements"),
    *("ArgMax", "ReduceMax", "TopK"),
}


@pytest.mark.parametrize("head", ["topk", "raw"])
def test_graph_needs_no_node_type_beyond_the_reorg_nets(exported, head):
    assert set(op_counts(onnx.load(exported[head] / "model.onnx"))) <= DEPLOY_OPS


def test_fp16_graph_has_fp16_weights_and_float32_io(exported):
    model = onnx.load(exported["topk"] / "model.fp16.onnx")
    kinds = {t.data_type for t in model.graph.initializer if len(t.dims) == 4}  # conv weights
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("head", ["topk", "raw"])
def test_manifest_is_complete_and_true(checkpoint, exported, head):
    out_dir = exported[head]
    manifest = load_manifest(out_dir)
    ckpt = yolor.load_model(checkpoint)
    assert (manifest.arch, manifest.nc, manifest.class_names) == (ckpt.arch, ckpt.nc, ckpt.class_names)
    assert manifest.input_size == ckpt.input_size and manifest.strides == list(ckpt.strides)
    assert np.allclose(manifest.anchors, ckpt.anchors.numpy())
    assert manifest.head == head and manifest.source["sha256"] == sha256_file(checkpoint)
    for artifact in manifest.artifacts.values():
        assert sha256_file(out_dir / artifact.file) == artifact.sha256
    assert set(manifest.artifacts) == {"onnx", "onnx_fp16"}
    for precision in ("fp32", "fp16"):
        record = manifest.validation[precision]
        assert record["passed"] and record["agreement"] >= 0.99
        assert record["providers"] == ["CPUExecutionProvider"]  # run as the server runs it on a CPU
        assert {b["batch_size"] for b in record["batches"].values()} == {3, 1}
    assert manifest.validation["fp32"]["max_rel_error"] <= 1e-4
    assert {"torch", "onnx", "onnxruntime", "opset"} <= set(manifest.versions)
    on_disk = json.loads((out_dir / "model.json").read_text())
    assert on_disk["output"]["name"] == {"topk": "detections", "raw": "predictions"}[head]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".export-")]  # staging cleaned
