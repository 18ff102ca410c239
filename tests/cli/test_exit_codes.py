"""`yolor`: every user error exits 2 with one "error: ..." line; a bug keeps its traceback."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main
from cli.errors import USER_ERRORS, is_user_error

ROOT = Path(__file__).resolve().parents[2]


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
    "export, missing checkpoint": lambda tmp: ["export", str(tmp / "missing.pt"), "--out", str(tmp / "o")],
    "serve, no model": lambda tmp: ["serve", "--model", str(tmp)],
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


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["export", "x.pt"])  # --out missing
    assert exited.value.code == 2 and "--out" in capsys.readouterr().err


@pytest.mark.parametrize("error", [ValueError("boom"), KeyError("boom"), TypeError("boom")])
def test_a_bug_inside_a_command_propagates(monkeypatch, tmp_path, error):
    import yolor.checkpoint

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(yolor.checkpoint, "load_model", broken)
    with pytest.raises(type(error), match="boom"):
        main(["info", str(tmp_path / "any.pt")])


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
