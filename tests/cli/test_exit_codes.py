"""`yolor`: every user error exits 2 with one "error: ..." line; a bug keeps its traceback."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main
from cli.errors import USER_ERRORS, is_user_error

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def saved_environment():
    """`yolor serve` writes its options into YOLOR_* variables; keep them out of other tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run_cli(args: list[str], caplog) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="yolor"):
        status = main(args)
    return status, caplog.text


def test_every_listed_user_error_is_a_real_exception_class():
    for name in USER_ERRORS:
        module, _, cls = name.rpartition(".")
        error = getattr(importlib.import_module(module), cls)
        assert isinstance(error, type) and issubclass(error, Exception), name
        assert is_user_error(error("x")), name


def test_a_plain_value_error_is_not_a_user_error():
    assert not is_user_error(ValueError("a bug")) and not is_user_error(KeyError("k"))


USER_ERROR_CASES = {
    "info, missing file": lambda tmp: ["info", str(tmp / "missing.pt")],
    "info, not a checkpoint": lambda tmp: ["info", str(_write(tmp / "junk.pt", b"junk"))],
    "info, unknown arch": lambda tmp: ["info", str(_write(tmp / "junk.pt", b"junk")), "--arch", "nope"],
    "convert, missing file": lambda tmp: ["convert", str(tmp / "missing.pt"), str(tmp / "out.pt")],
    "convert, output folder missing": lambda tmp: ["convert", "any.pt", str(tmp / "no" / "out.pt")],
    "convert, output is a folder": lambda tmp: ["convert", "any.pt", str(tmp)],
    "export, missing checkpoint": lambda tmp: ["export", str(tmp / "missing.pt"), "--out", str(tmp / "o")],
    "export, opt-batch above max-batch": lambda tmp: [
        "export",
        "any.pt",
        "--out",
        str(tmp / "o"),
        "--max-batch",
        "4",
        "--opt-batch",
        "8",
    ],
    "serve, no model": lambda tmp: ["serve", "--model", str(tmp)],
    "serve, invalid settings": lambda tmp: ["serve", "--port", "70000", "--device", "gpu"],
    "serve, invalid manifest": lambda tmp: ["serve", "--model", str(_write_dir(tmp / "m", b"{not json"))],
    "weights show, unknown name": lambda tmp: ["weights", "show", "nope"],
    "weights show, unknown field": lambda tmp: ["weights", "show", "yolor_p6", "--field", "nope"],
    "train, no --data": lambda tmp: ["train", "--out", str(tmp / "run")],
    "train, missing dataset": lambda tmp: [
        "train",
        "--data",
        str(tmp / "none.json"),
        "--out",
        str(tmp / "r"),
    ],
    "train, nothing to resume": lambda tmp: ["train", "--out", str(tmp / "empty"), "--resume"],
    "train, unknown arch": lambda tmp: ["train", "--data", "d.json", "--out", str(tmp), "--arch", "nope"],
    "train, img-size off the stride": lambda tmp: [
        "train",
        "--data",
        "d.json",
        "--out",
        str(tmp),
        "--arch",
        "yolor_csp",
        "--img-size",
        "100",
    ],
    "eval, missing model": lambda tmp: ["eval", str(tmp / "missing.pt"), "--data", str(tmp / "d.json")],
    "data synth, bad option": lambda tmp: ["data", "synth", "--out", str(tmp / "d"), "--min-size", "-1"],
    "data synth, existing dataset": lambda tmp: [
        "data",
        "synth",
        "--out",
        str(_dataset(tmp)),
        "--train",
        "1",
    ],
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _write_dir(folder: Path, manifest: bytes) -> Path:
    folder.mkdir()
    (folder / "model.json").write_bytes(manifest)
    return folder


def _dataset(tmp: Path) -> Path:
    out = tmp / "shapes"
    assert main(["data", "synth", "--out", str(out), "--train", "1", "--val", "1", "--workers", "1"]) == 0
    return out


@pytest.mark.parametrize("case", sorted(USER_ERROR_CASES))
def test_user_errors_exit_2_with_one_line(case, tmp_path, caplog, capsys):
    status, log = run_cli(USER_ERROR_CASES[case](tmp_path), caplog)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert status == 2, log
    assert len(errors) == 1 and errors[0].getMessage().startswith("error: "), log
    assert "Traceback" not in log + capsys.readouterr().err


def test_one_line_settings_error_names_the_variables(caplog):
    status, log = run_cli(["serve", "--port", "70000", "--device", "gpu"], caplog)
    assert status == 2 and "\n" not in log.strip()
    assert "port (YOLOR_PORT): Input should be less than or equal to 65535" in log
    assert "device (YOLOR_DEVICE)" in log


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["export", "x.pt"])  # --out missing
    assert exited.value.code == 2 and "--out" in capsys.readouterr().err


BAD_VALUES = {  # refused by the option's type, before any work: argparse's usage error, exit 2
    "export --opset": ["export", "x.pt", "--out", "o", "--opset", "16"],
    "export --val-conf": ["export", "x.pt", "--out", "o", "--val-conf", "1.5"],
    "train --batch": ["train", "--data", "d", "--out", "o", "--batch", "0"],
    "train --workers": ["train", "--data", "d", "--out", "o", "--workers", "-1"],
    "train --mosaic": ["train", "--data", "d", "--out", "o", "--mosaic", "2"],
    "train --depth": ["train", "--data", "d", "--out", "o", "--depth", "0"],
    "train --seed": ["train", "--data", "d", "--out", "o", "--seed", "-1"],
    "eval --iou": ["eval", "m.pt", "--data", "d", "--iou", "nan"],
    "data synth --seed": ["data", "synth", "--out", "o", "--seed", "-1"],
    "weights download --sha256": ["weights", "download", "yolor_p6", "--sha256", "abc"],
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_option_values_are_argparse_errors(case, capsys):
    with pytest.raises(SystemExit) as exited:
        main(BAD_VALUES[case])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"argument {case.split()[-1]}" in err and "Traceback" not in err


def test_the_opset_floor_is_the_exporters():
    from cli.export_command import MIN_OPSET
    from export.onnx_export import MIN_OPSET as EXPORTER_MIN_OPSET

    assert MIN_OPSET == EXPORTER_MIN_OPSET


@pytest.mark.parametrize("error", [ValueError("boom"), KeyError("boom"), TypeError("boom")])
def test_a_bug_inside_a_command_propagates(monkeypatch, tmp_path, error):
    import yolor.checkpoint

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(yolor.checkpoint, "load_model", broken)
    with pytest.raises(type(error), match="boom"):
        main(["info", str(tmp_path / "any.pt")])


BUGS = {  # a command, and a function it calls that a bug makes raise
    "convert": (["convert", "a.pt", "b.pt"], "yolor.checkpoint.load_model"),
    "weights show": (["weights", "show", "yolor_p6"], "export.official_weights.official_weights"),
    "weights download": (["weights", "download", "yolor_p6", "--quiet"], "export.download.download"),
    "data synth": (["data", "synth", "--out", "d"], "train.data.synth.write_dataset"),
    "train": (["train", "--data", "d.json", "--out", "r"], "train.trainer.train"),
    "eval": (["eval", "m.pt", "--data", "d.json"], "train.eval_model.evaluate_model"),
    "export": (["export", "m.pt", "--out", "o"], "export.pipeline.run_export"),
    "serve": (["serve"], "uvicorn.run"),
}


@pytest.mark.parametrize("case", sorted(BUGS))
def test_a_bug_in_any_command_propagates(case, monkeypatch, tmp_path):
    argv, target = BUGS[case]
    module, _, name = target.rpartition(".")

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.chdir(tmp_path)  # `weights download` and `data synth` write relative to here
    monkeypatch.setattr(importlib.import_module(module), name, broken)
    monkeypatch.setattr("service.logs.configure_logging", lambda *a: None)
    with pytest.raises(KeyError, match="boom"):
        main(argv)


@pytest.mark.slow  # a fresh interpreter importing the CLI
def test_a_bug_exits_1_with_its_traceback():
    code = (
        "import yolor.archs.specs as specs\n"
        "class Broken(dict):\n"
        "    def items(self): raise ValueError('boom')\n"
        "specs.ARCHS = Broken()\n"
        "from cli import main\n"
        "raise SystemExit(main(['archs']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: boom" in done.stderr
