"""yolor export --int8: the float tail, calibration sources, the accuracy gate, the manifest, serving."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.int8 import calibration_files, float_tail, load_calibration
from export.pipeline import ExportError, ExportOptions, Int8Options, run_export
from export.validate import Int8Gate, ValidationFailed, count_matches
from service.backends.factory import create_backend, load_checked_backend
from service.core.preprocess import preprocess
from service.manifest import ManifestError, ModelManifest, load_manifest
from service.processing import head_layout, select_detections
from service.settings import DEMO_MODEL_DIR, Settings
from tests.support.export_memo import memoized_to_onnx
from train.data.datasets import load_dataset
from train.data.synth import SynthOptions, write_dataset

pytestmark = [pytest.mark.export, pytest.mark.slow]

DEMO_CHECKPOINT = DEMO_MODEL_DIR / "checkpoint.pt"


def conv(name: str, x: str, out: str, w: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [out], name=name)


def test_float_tail_is_the_last_convolutions_and_everything_after_them():
    """Two branches: the prediction convs (no conv after them) and the decode after them stay float;
    a conv feeding another conv, and what lies between, are quantized."""
    nodes = [
        conv("stem", "images", "a", "w"),
        helper.make_node("Sigmoid", ["a"], ["b"], name="act"),
        conv("neck", "b", "c", "w"),
        conv("pred_small", "c", "p1", "w"),
        conv("pred_large", "b", "p2", "w"),  # reads the stem: still a last conv
        helper.make_node("Sigmoid", ["p1"], ["s1"], name="decode_1"),
        helper.make_node("Concat", ["s1", "p2"], ["cat"], name="merge", axis=1),
        helper.make_node("Identity", ["cat"], ["detections"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])],
    )
    tail = float_tail(helper.make_model(graph))
    assert tail == sorted(["pred_small", "pred_large", "decode_1", "merge", "out"])


def test_calibration_files_from_a_folder_and_from_a_dataset(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.png", "sub/c.JPG"):
        cv2.imwrite(str(folder / name), np.full((8, 8, 3), 50, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in calibration_files(folder, 10)] == ["a.png", "b.jpg", "c.JPG"]
    assert [p.name for p in calibration_files(folder, 2)] == ["a.png", "b.jpg"]
    write_dataset(tmp_path / "ds", train=3, val=2, seed=0, options=SynthOptions(size=64, min_size=8))
    assert len(calibration_files(tmp_path / "ds" / "dataset.json", 10)) == 3  # the train split
    calibration = load_calibration(folder, 10, 32, 114)
    assert len(calibration.tensors) == 3 and calibration.tensors[0].shape == (1, 3, 32, 32)
    assert calibration.sha256 == load_calibration(folder, 10, 32, 114).sha256
    assert calibration.sha256 != load_calibration(folder, 2, 32, 114).sha256
    with pytest.raises(ValueError, match="no image files"):
        calibration_files(tmp_path / "ds" / "train" / "labels", 10)
    (folder / "0-broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with pytest.raises(ValueError, match=r"0-broken\.jpg: not a decodable image"):
        load_calibration(folder, 10, 32, 114)


@pytest.fixture(scope="module", autouse=True)
def _one_trace_per_graph():
    """Every test here exports the demo checkpoint through the whole pipeline; the ONNX trace of the
    same graph (torch.onnx, deterministic: ~14 s each) is made once and copied for the others."""
    with pytest.MonkeyPatch.context() as patch, memoized_to_onnx(patch):
        yield


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Calibration (train split) and labelled validation images of the demo model's domain."""
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, train=32, val=40, seed=7, options=SynthOptions(size=256))
    return root / "dataset.json"


@pytest.fixture(scope="module")
def int8_export(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-int8")
    int8 = Int8Options(calib=shapes, calib_count=32, targets=("onnxruntime", "tensorrt"), val_data=shapes)
    manifest = run_export(ExportOptions(checkpoint=DEMO_CHECKPOINT, out_dir=out, max_batch=4, int8=int8))
    return out, manifest


def test_int8_export_is_gated_recorded_and_round_trips(int8_export, shapes):
    out, manifest = int8_export
    assert load_manifest(out) == manifest
    assert ModelManifest.model_validate_json(manifest.to_json()) == manifest
    for target, key, file, activations in [
        ("onnxruntime", "onnx_int8", "model.int8.onnx", "uint8 asymmetric"),
        ("tensorrt", "onnx_int8_tensorrt", "model.int8-tensorrt.onnx", "int8 symmetric"),
    ]:
        artifact = manifest.artifacts[key]
        assert artifact.file == file and artifact.precision == "int8" and (out / file).is_file()
        model = onnx.load(str(out / file))
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "TopK"} <= ops
        q_types = {
            init.data_type
            for init in model.graph.initializer
            if any(n.op_type == "QuantizeLinear" and n.input[2] == init.name for n in model.graph.node)
        }
        assert q_types == {TensorProto.UINT8 if activations.startswith("uint8") else TensorProto.INT8}
        record = manifest.validation[f"int8_{target}"]
        assert record["passed"] and record["agreement"] >= 0.9
        assert record["detections_reference"] >= 10
        quant = record["quantization"]
        assert quant["activations"] == activations and quant["images"] == 32 and len(quant["sha256"]) == 64
        assert quant["method"] == "percentile"
        maps = record["map"]
        assert maps["fp32"]["images"] == 40 and maps["drop_points"] <= 1.0
        lost = (maps["fp32"]["map50_95"] - maps["int8"]["map50_95"]) * 100
        assert maps["drop_points"] == pytest.approx(lost)


def test_int8_serves_and_keeps_detections(int8_export, shapes):
    """YOLOR_PRECISION=int8 loads model.int8.onnx; on held-out images its detections match FP32's."""
    out, manifest = int8_export
    fp32, _ = load_checked_backend(Settings(model_dir=out, device="cpu"), manifest)
    int8, _ = load_checked_backend(Settings(model_dir=out, device="cpu", precision="int8"), manifest)
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    dataset = load_dataset(shapes, "val")
    layout, kept, total = head_layout(manifest.head), 0, 0
    for i in range(10):
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(dataset[i].image, cv2.COLOR_RGB2BGR))
        x = preprocess(jpeg.tobytes(), manifest, max_pixels=1 << 30).tensor[None]
        ref, got = (
            select_detections(*layout.candidates(b.infer(x)[0], 0.25), conf=0.25, iou=0.45, max_det=300)
            for b in (fp32, int8)
        )
        kept += count_matches(ref, got, 0.75)
        total += len(ref)
    fp32.close(), int8.close()
    assert total >= 20 and kept / total >= 0.9


def test_auto_never_picks_int8_and_int8_needs_its_artifact(int8_export, tmp_path):
    out, manifest = int8_export
    auto = create_backend(Settings(model_dir=out, device="cpu"), manifest)
    assert auto.precision == "fp32"
    auto.close()
    without = manifest.model_copy(
        update={"artifacts": {k: v for k, v in manifest.artifacts.items() if not k.startswith("onnx_int8")}}
    )
    with pytest.raises(ManifestError, match="export one with `yolor export CHECKPOINT --int8"):
        create_backend(Settings(model_dir=out, device="cpu", precision="int8"), without)


def test_a_broken_calibration_fails_the_gate_and_writes_nothing(tmp_path, shapes):
    """All-black calibration images: the activation ranges no longer cover real images."""
    black = tmp_path / "black"
    black.mkdir()
    for i in range(8):
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((256, 256, 3), np.uint8))
    out = tmp_path / "out"
    for val_data in (None, shapes):
        int8 = Int8Options(calib=black, calib_count=8, method="minmax", val_data=val_data)
        with pytest.raises(ValidationFailed, match="int8 ONNX out of tolerance") as failed:
            run_export(ExportOptions(checkpoint=DEMO_CHECKPOINT, out_dir=out, max_batch=4, int8=int8))
        assert not list(out.iterdir())  # nothing, not even the FP32 model
        if val_data is not None:
            assert "mAP@0.5:0.95 drops" in str(failed.value) or "agreement" in str(failed.value)


def test_onnx_runtime_weights_use_a_7_bit_range_and_tensorrt_weights_the_full_one(int8_export):
    """ONNX Runtime's u8s8 kernels saturate on x86 without VNNI unless weights stay within 7 bits
    (this suite's AVX2 host lost 2.4 mAP points without it); TensorRT's symmetric int8 does not."""
    from onnx import numpy_helper

    out, _ = int8_export
    largest = {}
    for file in ("model.int8.onnx", "model.int8-tensorrt.onnx"):
        weights = [
            numpy_helper.to_array(init)
            for init in onnx.load(str(out / file)).graph.initializer
            if init.data_type == TensorProto.INT8 and init.dims and len(init.dims) == 4  # conv weights
        ]
        assert weights, file
        largest[file] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest["model.int8.onnx"] <= 64 < largest["model.int8-tensorrt.onnx"]


def test_the_map_tolerance_is_a_flag(int8_export, shapes, tmp_path):
    """The same calibration fails once the allowed mAP drop is below what it really loses (or
    gains: a negative tolerance asks for a gain)."""
    _, manifest = int8_export
    drop = manifest.validation["int8_onnxruntime"]["map"]["drop_points"]
    gate = Int8Gate(max_map_drop=drop - 0.25)
    int8 = Int8Options(calib=shapes, calib_count=32, val_data=shapes, gate=gate)
    with pytest.raises(ValidationFailed, match=r"mAP@0\.5:0\.95 drops"):
        run_export(ExportOptions(checkpoint=DEMO_CHECKPOINT, out_dir=tmp_path, max_batch=4, int8=int8))


def test_calibration_errors_are_export_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match="no image files"):
        run_export(
            ExportOptions(checkpoint=DEMO_CHECKPOINT, out_dir=tmp_path / "o", int8=Int8Options(calib=empty))
        )


def test_yolor_eval_runs_the_int8_model_as_the_gate_measured_it(int8_export, shapes):
    from train.eval_model import evaluate_model

    out, manifest = int8_export
    gate = manifest.validation["int8_onnxruntime"]["map"]
    for precision in ("fp32", "int8"):
        metrics = evaluate_model(out, shapes, precision=precision)
        assert metrics["precision"] == precision
        assert metrics["map50_95"] == pytest.approx(gate[precision]["map50_95"], abs=1e-9)


@pytest.mark.anyio
async def test_the_service_answers_with_the_int8_model(int8_export, shapes):
    from service.http.app import create_app
    from tests.support.app import files, running

    out, _ = int8_export
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(load_dataset(shapes, "val")[0].image, cv2.COLOR_RGB2BGR))
    answers = {}
    for precision in ("fp32", "int8"):
        app = create_app(Settings(model_dir=out, device="cpu", precision=precision))
        async with running(app) as client:
            info = (await client.get("/model")).json()
            r = await client.post("/detect", files=files(jpeg.tobytes()))
        assert r.status_code == 200 and info["precision"] == precision
        assert r.json()["model"]["precision"] == precision
        answers[precision] = [d["class_id"] for d in r.json()["results"][0]["detections"]]
    assert answers["int8"] == answers["fp32"] and answers["fp32"]  # same objects, in the same order
