"""service/ must import with torch (and the model/export packages) unavailable: the serving image has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, pkgutil, sys
for name in ("torch", "torchvision", "yolor", "export"):
    sys.modules[name] = None  # any import of these now raises ImportError
import service
mods = [m.name for m in pkgutil.walk_packages(service.__path__, "service.")
        if not m.name.startswith("service.backends.torch")]
for name in mods:
    importlib.import_module(name)
print(len(mods))
"""


def test_every_service_module_imports_without_torch():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 4  # processing/, its modules, ...


BACKENDS_ALONE = """
import sys
for name in ("pydantic", "pydantic_settings", "fastapi", "starlette", "grpc"):
    sys.modules[name] = None
from service.backends import FakeBackend, torch_cuda, tensorrt_build, engine_cache, cudart, onnx_runtime
print(sorted(m for m in sys.modules if m.startswith("service.")))
"""


def test_the_backends_package_imports_without_the_server_packages():
    """`yolor bench gpu` runs the torch backend on a GPU host that has no pydantic or FastAPI."""
    out = subprocess.run(
        [sys.executable, "-c", BACKENDS_ALONE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "'service.backends.torch_cuda'" in out.stdout and "service.settings" not in out.stdout
