"""`yolor serve`: options become YOLOR_* settings, a missing model is a clear error."""

from __future__ import annotations

import argparse
import os

import pytest

from cli import CommandError, serve_command
from tests.support.model_files import write_model_dir

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def saved_environment():
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("YOLOR_")]:
        del os.environ[name]
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def uvicorn_calls(monkeypatch):
    import uvicorn

    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.setattr("service.logs.configure_logging", lambda *a: None)
    return calls


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="yolor")
    serve_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def test_options_reach_uvicorn_and_the_workers_environment(tmp_path, uvicorn_calls):
    write_model_dir(tmp_path)
    args = parse("--model", str(tmp_path), "--host", "0.0.0.0", "--port", "9001", "--backend", "onnxruntime")
    assert args.func(args) == 0
    ((positional, options),) = uvicorn_calls
    assert positional == ("service.http.app:app_factory",)
    assert options["factory"] is True
    assert (options["host"], options["port"], options["workers"]) == ("0.0.0.0", 9001, 1)
    assert options["log_config"] is None
    assert os.environ["YOLOR_MODEL_DIR"] == str(tmp_path)  # what each worker's Settings() reads
    assert os.environ["YOLOR_BACKEND"] == "onnxruntime"


def test_environment_settings_apply_when_options_are_not_given(tmp_path, uvicorn_calls):
    write_model_dir(tmp_path)
    os.environ.update({"YOLOR_MODEL_DIR": str(tmp_path), "YOLOR_PORT": "9100", "YOLOR_WORKERS": "3"})
    args = parse()
    args.func(args)
    ((_, options),) = uvicorn_calls
    assert (options["port"], options["workers"]) == (9100, 3)


def test_missing_model_is_a_clear_error(tmp_path, uvicorn_calls):
    args = parse("--model", str(tmp_path / "nothing"))
    with pytest.raises(CommandError, match=r"no model at .*nothing.*run `yolor export` first"):
        args.func(args)
    assert uvicorn_calls == []


def test_a_model_repository_is_checked_before_the_server_starts(tmp_path, uvicorn_calls):
    from cli.errors import is_user_error
    from service.core.repository import RepositoryError
    from service.manifest import ManifestError

    write_model_dir(tmp_path / "cars" / "1")
    args = parse("--model-repository", str(tmp_path))
    assert args.func(args) == 0 and os.environ["YOLOR_MODEL_REPOSITORY"] == str(tmp_path)
    os.environ["YOLOR_MODELS"] = "cars,boats"
    with pytest.raises(RepositoryError, match="'boats' is not a model") as refused:
        args.func(args)
    assert is_user_error(refused.value)  # exit status 2, one line
    del os.environ["YOLOR_MODELS"]
    (tmp_path / "cars" / "2").mkdir()
    (tmp_path / "cars" / "2" / "model.json").write_text("{}")  # the newest version, served: broken
    with pytest.raises(ManifestError):
        args.func(args)
    assert len(uvicorn_calls) == 1


def test_default_model_is_the_bundled_demo(uvicorn_calls):
    """With no --model, `yolor serve` serves service/demo_model, which ships with the repository."""
    from service.manifest import load_manifest
    from service.settings import DEMO_MODEL_DIR, Settings

    assert Settings().model_dir == DEMO_MODEL_DIR
    manifest = load_manifest(DEMO_MODEL_DIR)  # present and valid
    assert (DEMO_MODEL_DIR / manifest.artifacts["onnx"].file).is_file()
    args = parse()
    assert args.func(args) == 0
    assert len(uvicorn_calls) == 1


def test_invalid_settings_are_a_clear_error(tmp_path, uvicorn_calls):
    write_model_dir(tmp_path)
    args = parse("--model", str(tmp_path), "--device", "gpu")
    with pytest.raises(CommandError, match="device"):
        args.func(args)


def test_the_factory_builds_the_app_from_the_environment(tmp_path, monkeypatch):
    from service.http import app as app_module

    monkeypatch.setattr(app_module, "configure_logging", lambda *a: None)
    os.environ.update({"YOLOR_MODEL_DIR": str(tmp_path), "YOLOR_MAX_DELAY_MS": "3"})
    app = app_module.app_factory()
    assert app.state.service.settings.model_dir == tmp_path
    assert app.state.service.settings.max_delay_ms == 3
