"""`yolor export` from the command line: success, and clear failures that write nothing."""

from __future__ import annotations

import logging

import pytest

import cli
import export.validate
from export.pipeline import ExportOptions, run_export
from export.validate import ValidationFailed
from tests.support.nets import tiny_checkpoint

pytestmark = [pytest.mark.export]


@pytest.fixture(scope="module")
def csp_checkpoint(tmp_path_factory):
    return tiny_checkpoint("yolor_csp", tmp_path_factory.mktemp("cli") / "csp.pt")


def export_cli(*args: str) -> int:
    return cli.main(["export", *map(str, args)])


@pytest.mark.slow
def test_export_command_writes_artifacts(csp_checkpoint, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    assert export_cli(csp_checkpoint, "--out", out, "--top-k", 50, "--img-size", 96) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert any("validate fp32 ONNX" in s and "done in" in s for s in steps)  # progress is shown


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda ck, tmp: [tmp / "absent.pt"], "checkpoint not found"),
        (lambda ck, tmp: [ck, "--arch", "yolor-x"], "unknown YOLOR arch 'yolor-x'"),
        (lambda ck, tmp: [ck, "--arch", "yolor_p6"], "does not fit arch 'yolor_p6'"),
        (lambda ck, tmp: [ck, "--img-size", 100], "must be a positive multiple of 32"),
        (
            lambda ck, tmp: [(tmp / "junk.pt").write_bytes(b"\x80\x02garbage") and tmp / "junk.pt"],
            "not a readable PyTorch checkpoint",
        ),
        (lambda ck, tmp: [ck, "--int8"], "--int8 needs --calib IMAGES"),
        (lambda ck, tmp: [ck, "--calib", tmp], "--int8 needs --calib IMAGES"),
        (lambda ck, tmp: [ck, "--int8", "--calib", tmp / "nowhere"], "--calib"),
        (lambda ck, tmp: [ck, "--int8", "--calib", tmp, "--val-data", tmp / "no.json"], "--val-data"),
        pytest.param(
            lambda ck, tmp: [ck, "--int8", "--calib", tmp, "--img-size", 64],
            "no image files",
            marks=pytest.mark.slow,  # exports the ONNX before it finds the calibration folder empty
        ),
    ],
    ids=[
        "missing",
        "unknown-arch",
        "wrong-arch",
        "img-size",
        "corrupt",
        "int8-without-calib",
        "calib-without-int8",
        "calib-missing",
        "val-data-missing",
        "calib-empty",
    ],
)
def test_bad_inputs_fail_clearly_and_write_nothing(csp_checkpoint, tmp_path, caplog, make_args, message):
    out = tmp_path / "out"
    assert export_cli(*make_args(csp_checkpoint, tmp_path), "--out", out) == 2
    assert message in caplog.text
    assert not out.exists() or not any(out.iterdir())


def test_engine_without_tensorrt_says_so_before_any_work(csp_checkpoint, tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    out = tmp_path / "out"
    assert export_cli(csp_checkpoint, "--out", out, "--engine") == 2
    assert "TensorRT is not installed" in caplog.text
    assert "[1/" not in caplog.text  # failed before loading anything
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_failed_validation_leaves_previous_export_untouched(csp_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous export")
    monkeypatch.setattr(export.validate, "FP32_MAX_REL_ERROR", 0.0)
    with pytest.raises(ValidationFailed, match="fp32 ONNX out of tolerance: max relative error"):
        run_export(ExportOptions(checkpoint=csp_checkpoint, out_dir=out, img_size=64, top_k=20))
    assert [p.name for p in out.iterdir()] == ["model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"previous export"
