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
