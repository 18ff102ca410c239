"""Export validation: every gate fails on a file that is out of tolerance, and passes on one that is not.

Each negative case appends a few ops to the end of an exported graph (scale, slice), so the file is
the real export but for one known defect; the same harness with identity ops is the positive
control, which tells a tripped gate from a broken harness. Also: validation and `yolor eval` read
top-K class ids as the server does (rounded, through `service.processing.heads`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import yolor
from export.graph import ExportGraph
from export.validate import (
    FP32_MAX_REL_ERROR,
    MIN_AGREEMENT,
    PostprocessParams,
    ValidationFailed,
    compare,
    photo_batch,
    run_onnx,
    validate_onnx,
)
from service.backends.artifacts import sha256_file
from service.manifest import Artifact, ManifestError, load_manifest
from service.processing.heads import head_layout
from tests.support.model_files import write_model_dir, write_tiny_onnx
from train.eval_model import onnx_predictor

pytestmark = [pytest.mark.export, pytest.mark.slow]  # exports four nets (~3 min)

NUMBER = r"[0-9.e+-]+"
ONNX_FILE = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}
NEAR_TWO = np.float32(1.9999998)  # a float-coded class 2 a hair below the integer


@pytest.fixture(scope="module")
def models(checkpoint):
    """(unfused model, fused model) of the session checkpoint, loaded once per module."""
    model = yolor.load_model(checkpoint)
    return model, yolor.fuse_model(model)


def with_tail(
    src: Path,
    dst: Path,
    *,
    scale: np.ndarray | None = None,
    rows: int | None = None,
    name: str = "model.onnx",
) -> Path:
    """`src` with `output * scale` (per column, broadcast over rows) and/or `output[:, :rows]` appended
    to the graph, written to `dst/name`. The output keeps its name; its declared row count follows."""
    model = onnx.load(src)
    graph = model.graph
    out = graph.output[0]
    producer = next(n for n in graph.node if out.name in n.output)
    producer.output[list(producer.output).index(out.name)] = current = f"{out.name}_untouched"
    cols = out.type.tensor_type.shape.dim[2].dim_value
    scale = np.ones(cols, np.float32) if scale is None and rows is None else scale
    tail = []
    if scale is not None:
        graph.initializer.append(numpy_helper.from_array(np.asarray(scale, np.float32), "tail_scale"))
        tail.append(helper.make_node("Mul", [current, "tail_scale"], ["tail_scaled"]))
        current = "tail_scaled"
    if rows is not None:
        for key, value in {"starts": 0, "ends": rows, "axes": 1}.items():
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"tail_{key}"))
        tail.append(
            helper.make_node("Slice", [current, "tail_starts", "tail_ends", "tail_axes"], ["tail_sliced"])
        )
        out.type.tensor_type.shape.dim[1].dim_value = rows
    tail[-1].output[0] = out.name
    graph.node.extend(tail)
    onnx.checker.check_model(model)
    dst.mkdir(parents=True, exist_ok=True)
    onnx.save(model, dst / name)
    return dst / name


def columns(head: str, nc: int, **scales: float) -> np.ndarray:
    """A per-column scale vector for `head`'s layout: 1 except the named columns."""
    names = head_layout(head).columns([f"c{i}" for i in range(nc)])
    vec = np.ones(len(names), np.float32)
    for col, value in scales.items():
        vec[names.index(col)] = value
    return vec


def validate(path: Path, models, out_dir: Path, precision: str) -> dict:
    """validate_onnx as the export pipeline calls it, for the folder's head and size."""
    model, fused = models
    manifest = load_manifest(out_dir)
    graph = ExportGraph(fused, manifest.head, manifest.top_k, fp16=precision == "fp16")
    return validate_onnx(path, model, graph, manifest.input_size, precision)


# -- positive controls: the harness's identity tail passes, at both precisions -----------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("head", ["topk", "raw"])
def test_good_export_passes_through_the_test_harness(models, exported, tmp_path, head, precision):
    path = with_tail(exported[head] / ONNX_FILE[precision], tmp_path)  # Mul by ones
    record = validate(path, models, exported[head], precision)
    assert record["passed"] and "failure" not in record
    assert record["agreement"] >= MIN_AGREEMENT and record["detections_reference"] > 0
    if precision == "fp32":
        assert record["max_rel_error"] <= FP32_MAX_REL_ERROR
    assert record["providers"] == ["CPUExecutionProvider"]
    assert {b["batch_size"] for b in record["batches"].values()} == {3, 1}


# -- (a) FP32 relative error ------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["topk", "raw"])
def test_fp32_error_just_under_the_bound_passes(models, exported, tmp_path, head):
    nc = models[0].nc
    path = with_tail(exported[head] / "model.onnx", tmp_path, scale=columns(head, nc) * (1 + 3e-5))
    record = validate(path, models, exported[head], "fp32")
    assert record["passed"] and 1e-5 < record["max_rel_error"] <= FP32_MAX_REL_ERROR


@pytest.mark.parametrize("head", ["topk", "raw"])
def test_fp32_error_above_the_bound_fails_even_when_detections_agree(models, exported, tmp_path, head):
    # every output value 0.05% off: the same detections (IoU ~1, same classes), but no longer float32
    # noise; only the error gate may trip, so the message names it alone
    nc = models[0].nc
    path = with_tail(exported[head] / "model.onnx", tmp_path, scale=columns(head, nc) * (1 + 5e-4))
    with pytest.raises(ValidationFailed) as failed:
        validate(path, models, exported[head], "fp32")
    assert failed.match(rf"^fp32 ONNX out of tolerance: max relative error {NUMBER} > 1e-04$")


# -- (b) detection agreement ------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("head", ["topk", "raw"])
def test_boxes_that_moved_fail_detection_agreement(models, exported, tmp_path, head, precision):
    # twice the width: IoU <= 0.5 with the reference box, below the 0.9 a match needs
    nc = models[0].nc
    stretch = columns(head, nc, x1=2.0, x2=2.0) if head == "topk" else columns(head, nc, w=2.0)
    onnx = exported[head] / ("model.onnx" if precision == "fp32" else "model.fp16.onnx")
    path = with_tail(onnx, tmp_path, scale=stretch)
    with pytest.raises(ValidationFailed) as failed:
        validate(path, models, exported[head], precision)
    agreement = rf"^{precision} ONNX out of tolerance: detection agreement {NUMBER} < {MIN_AGREEMENT}"
    assert failed.match(agreement + ("$" if precision == "fp16" else ""))
    if head == "topk":  # scores untouched: the score error stays float32 noise, agreement alone fails
        assert "max relative error" not in str(failed.value)


# -- (c) FP16: agreement only -----------------------------------------------------------------------


@pytest.mark.parametrize("head", ["topk", "raw"])
def test_fp16_is_held_to_agreement_not_to_the_fp32_error_bound(models, exported, tmp_path, head):
    nc = models[0].nc
    off = with_tail(exported[head] / "model.fp16.onnx", tmp_path, scale=columns(head, nc) * (1 + 5e-4))
    record = validate(off, models, exported[head], "fp16")
    assert record["passed"] and record["max_rel_error"] > FP32_MAX_REL_ERROR  # not gated at fp16
    assert record["tolerance"]["min_agreement"] == MIN_AGREEMENT


# -- (d) output shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["topk", "raw"])
def test_output_with_a_row_missing_fails_the_shape_check(models, exported, tmp_path, head):
    rows = onnx.load(exported[head] / "model.onnx").graph.output[0].type.tensor_type.shape.dim[1].dim_value
    path = with_tail(exported[head] / "model.onnx", tmp_path, rows=rows - 1)
    with pytest.raises(ValidationFailed) as failed:
        validate(path, models, exported[head], "fp32")
    assert failed.match(r"^fp32 ONNX out of tolerance: output shape differs on batch \['photos', 'random'\]$")


def test_a_file_the_serving_backend_refuses_fails_validation(models, exported, tmp_path):
    # two outputs: the backend's contract is one input, one output
    path = with_tail(exported["topk"] / "model.onnx", tmp_path / "two-outputs")
    model = onnx.load(path)
    model.graph.output.append(
        helper.make_tensor_value_info("detections_untouched", onnx.TensorProto.FLOAT, None)
    )
    onnx.save(model, path)
    with pytest.raises(
        ValidationFailed, match=r"the serving backend cannot load .*expected 1 input and 1 output"
    ):
        validate(path, models, exported["topk"], "fp32")
    # a graph for another input size loads, but cannot run the validation batches
    other = tmp_path / "other-size.onnx"
    write_tiny_onnx(other)
    with pytest.raises(ValidationFailed, match=r"the serving backend cannot run .*batch must have shape"):
        validate(other, models, exported["topk"], "fp32")


# -- one reading of top-K class ids: server, validation, yolor eval ---------------------------------


def topk_rows(class_ids: list[float]) -> np.ndarray:
    """Well-separated (K, 6) top-K rows with scores 0.9, 0.8, ... and the given float class ids."""
    k = len(class_ids)
    xy = np.arange(k, dtype=np.float32)[:, None] * 40
    boxes = np.concatenate([xy, xy, xy + 30, xy + 30], axis=1)
    scores = 0.9 - np.arange(k, dtype=np.float32) / 10
    return np.column_stack([boxes, scores, np.asarray(class_ids, np.float32)]).astype(np.float32)


def test_topk_class_ids_are_rounded_not_truncated():
    assert NEAR_TWO < 2 and int(NEAR_TWO) == 1  # what truncation would make of it
    boxes, scores, class_ids = head_layout("topk").candidates(topk_rows([0.0, 0.99999994, NEAR_TWO]), 0.25)
    assert class_ids.tolist() == [0, 1, 2] and class_ids.dtype == np.int64
    assert boxes.dtype == scores.dtype == np.float32
    with pytest.raises(ValueError, match="export with --head raw for multi-label"):
        head_layout("topk").candidates(topk_rows([0.0]), 0.25, multi_label=True)


def test_validation_compares_topk_class_ids_as_the_server_reads_them():
    ref = topk_rows([0.0, 1.0, 2.0, 2.0])[None]
    got = ref.copy()
    got[0, :, 5] = [0.0, 0.99999994, NEAR_TWO, NEAR_TWO]
    stats = compare(ref, got, "topk", PostprocessParams(), truncated=False)
    assert stats["detections_reference"] == 4
    assert stats["detections_matched"] == stats["detections_matched_after_nms"] == 4
    wrong = ref.copy()
    wrong[0, 2:, 5] = 1.0  # a real class change still counts against agreement
    assert compare(ref, wrong, "topk", PostprocessParams(), truncated=False)["detections_matched"] == 2


def test_export_whose_class_ids_sit_a_hair_below_integers_passes_validation(models, exported, tmp_path):
    # class column * (1 - 1e-7): 2 -> 1.9999998 etc.; truncating would change every class >= 1
    path = with_tail(
        exported["topk"] / "model.onnx", tmp_path, scale=columns("topk", models[0].nc, class_id=1 - 1e-7)
    )
    (got,), _ = run_onnx(path, [photo_batch(load_manifest(exported["topk"]).input_size)], "topk")
    cls = got[..., 5][got[..., 4] > PostprocessParams().conf]
    assert (np.trunc(cls) != np.rint(cls)).any()  # the case truncation gets wrong is present
    record = validate(path, models, exported["topk"], "fp32")
    assert record["passed"] and record["agreement"] == 1.0


def near_integer_model_dir(directory: Path) -> Path:
    """tests.support.model_files' tiny top-K model folder, its class ids [0, 0, 1, 2] stored as
    [0, 0, 0.99999994, 1.9999998], the manifest's sha256 updated to match."""
    manifest = write_model_dir(directory, onnx=True)
    path = directory / manifest.artifacts["onnx"].file
    model = onnx.load(path)
    (classes,) = [t for t in model.graph.initializer if t.name == "classes"]
    near = np.array([[0.0], [0.0], [0.99999994], [NEAR_TWO]], np.float32)
    assert np.array_equal(np.rint(near), numpy_helper.to_array(classes))
    classes.CopyFrom(numpy_helper.from_array(near, "classes"))
    onnx.save(model, path)
    artifact = Artifact(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size, precision="fp32")
    manifest.model_copy(update={"artifacts": {"onnx": artifact}}).write(directory)
    return directory


def test_yolor_eval_reads_topk_class_ids_as_the_server_does(tmp_path):
    predict, size, _ = onnx_predictor(near_integer_model_dir(tmp_path / "model"))
    x = np.full((1, 3, size, size), 0.5, np.float32)
    boxes, scores, class_ids = predict(x, 0.01, False)
    assert class_ids.tolist() == [0, 0, 1, 2] and len(boxes) == len(scores) == 4
    with pytest.raises(ValueError, match="export with --head raw for multi-label"):
        predict(x, 0.01, True)


def test_yolor_eval_refuses_an_onnx_file_that_is_not_the_manifests(tmp_path):
    model_dir = near_integer_model_dir(tmp_path / "model")
    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[-1] ^= 0xFF  # same size, other content: only the sha256 tells
    (model_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"sha256 .* does not match model\.json"):
        onnx_predictor(model_dir)
