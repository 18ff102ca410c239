"""The bundled demo model (service/demo_model): its files belong together and it really detects shapes.

The quality numbers of docs/training.md come from 500 held-out images (tools/build_demo_model.sh); this test
re-measures on a small held-out set drawn here, so a broken or swapped model fails CI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.manifest import load_manifest
from service.settings import DEMO_MODEL_DIR
from train.data.synth import CLASS_NAMES, SynthOptions, write_dataset
from train.eval_model import evaluate_model

pytestmark = [pytest.mark.model, pytest.mark.slow]

DEMO = DEMO_MODEL_DIR
# Held-out mAP@0.5 on all 500 images is in docs/training.md; the bar here is below the value measured on
# these 60, 0.946 (class minimum 0.92), with a margin for ONNX Runtime versions.
MIN_MAP50 = 0.85


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_shipped_files_belong_together():
    manifest = load_manifest(DEMO)
    onnx = manifest.artifacts["onnx"]
    assert sha256(DEMO / onnx.file) == onnx.sha256  # the ONNX the manifest describes
    assert sha256(DEMO / "checkpoint.pt") == manifest.source["sha256"]  # exported from this checkpoint
    assert manifest.class_names == list(CLASS_NAMES)
    assert "fp32" in manifest.validation  # export validated it (a failed validation writes nothing)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    # the first 60 images of docs/training.md's held-out set (seed 1; the model was trained on seed 0)
    root = tmp_path_factory.mktemp("held-out")
    write_dataset(root, train=0, val=60, seed=1, options=SynthOptions(size=256))
    return root / "dataset.json"


def test_the_demo_model_detects_held_out_shapes(held_out):
    metrics = evaluate_model(DEMO, held_out, "val")
    assert metrics["map50"] >= MIN_MAP50, metrics
    assert min(metrics["per_class_ap50"]) > 0.75, metrics  # every class, not just the easy ones


def test_multi_label_evaluation_needs_per_class_scores(held_out):
    with pytest.raises(ValueError, match="top-K head keeps one class per box"):
        evaluate_model(DEMO, held_out, "val", multi_label=True)
    single = evaluate_model(DEMO / "checkpoint.pt", held_out, "val")
    multi = evaluate_model(DEMO / "checkpoint.pt", held_out, "val", multi_label=True)
    assert multi["multi_label"] and not single["multi_label"]
    # extra candidates of the second-best classes only add recall here (official test.py's choice)
    assert multi["map50"] >= single["map50"] - 0.01 and multi["map50"] >= MIN_MAP50
