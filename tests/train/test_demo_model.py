"""The bundled demo model (models/demo): its files belong together and it really detects shapes.

The README's quality numbers come from 500 held-out images (tools/build_demo_model.sh); this test
re-measures on a small held-out set drawn here, so a broken or swapped model fails CI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.manifest import load_manifest
from train.data.synth import CLASS_NAMES, SynthOptions, write_dataset
from train.eval_model import evaluate_model

pytestmark = [pytest.mark.model, pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
# Held-out mAP@0.5 on all 500 images is in the README; the bar here is below the value measured on
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


def test_the_demo_model_detects_held_out_shapes(tmp_path):
    # the first 60 images of the README's held-out set (seed 1; the model was trained on seed 0)
    write_dataset(tmp_path, train=0, val=60, seed=1, options=SynthOptions(size=256))
    metrics = evaluate_model(DEMO, tmp_path / "dataset.json", "val")
    assert metrics["map50"] >= MIN_MAP50, metrics
    assert min(metrics["per_class_ap50"]) > 0.75, metrics  # every class, not just the easy ones
