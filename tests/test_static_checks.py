"""Static checks CI runs with the tests: mypy (strict on service/ and export/; pyproject.toml) and ruff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

STRICT_FLAGS = {
    "disallow_any_generics", "disallow_subclassing_any", "disallow_untyped_calls", "disallow_untyped_defs",
    "disallow_incomplete_defs", "disallow_untyped_decorators", "warn_return_any", "no_implicit_reexport",
    "strict_equality", "extra_checks",
}  # fmt: skip


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_service_and_export_are_held_to_every_strict_flag():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    (strict,) = [o for o in config["overrides"] if set(o["module"]) == {"service.*", "export.*"}]
    assert {flag for flag in STRICT_FLAGS if strict.get(flag) is True} == STRICT_FLAGS
    assert config["warn_unused_ignores"] and config["warn_redundant_casts"]


@pytest.mark.slow  # ~40 s; `make lint` runs it too
def test_mypy_finds_nothing():
    result = _run("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing():
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
