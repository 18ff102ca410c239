"""The engine directory: manifests, which cached engine may be reused, atomic writes, the build lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from service.backends import engine_cache as ec

# --- manifest ------------------------------------------------------------------------------------

IDENTITY = {
    "onnx_sha256": "a" * 64,
    "tensorrt_version": "10.13.0",
    "gpu_name": "NVIDIA H200",
    "compute_capability": "9.0",
}


def _manifest(max_batch: int = 16) -> dict:
    shapes = ((1, 3, 640, 640), (8, 3, 640, 640), (max_batch, 3, 640, 640))
    return ec.make_engine_manifest(
        **IDENTITY, input_name="images", shapes=shapes, workspace_mb=4096, precision="fp16",
        engine_sha256="b" * 64, build_seconds=12.34567, timing_cache=Path("/c/t.cache"),
    )  # fmt: skip


def test_make_engine_manifest_fields():
    m = _manifest()
    assert m["format"] == "yolor-serving/engine/1"
    assert m["profile"] == {
        "input": "images",
        "min": [1, 3, 640, 640],
        "opt": [8, 3, 640, 640],
        "max": [16, 3, 640, 640],
    }
    assert (m["precision"], m["workspace_mb"], m["build_seconds"], m["timing_cache"]) == (
        "fp16",
        4096,
        12.346,
        "/c/t.cache",
    )
    assert m["built_at"].endswith("+00:00")
    assert json.loads(json.dumps(m)) == m  # plain JSON types only


def test_engine_matches_its_own_build():
    assert ec.engine_matches(_manifest(), **IDENTITY, max_batch=16) == (True, "engine matches")
    assert ec.engine_matches(_manifest(), **IDENTITY, max_batch=1)[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("onnx_sha256", "c" * 64),
        ("tensorrt_version", "10.13.2"),
        ("gpu_name", "NVIDIA H100"),
        ("compute_capability", "8.9"),
    ],
)
def test_engine_matches_reports_each_mismatch(field, value):
    ok, reason = ec.engine_matches(_manifest(), **{**IDENTITY, field: value}, max_batch=16)
    assert not ok
    assert field in reason and value in reason and str(IDENTITY[field]) in reason


def test_engine_matches_refuses_a_smaller_profile():
    ok, reason = ec.engine_matches(_manifest(max_batch=8), **IDENTITY, max_batch=16)
    assert not ok
    assert "8" in reason and "16" in reason


@pytest.mark.parametrize(
    "broken",
    [{"format": "yolor-serving/engine/0"}, {"format": None}, {"profile": {}}, {"profile": {"max": []}}],
)
def test_engine_matches_refuses_foreign_or_broken_manifests(broken):
    ok, reason = ec.engine_matches({**_manifest(), **broken}, **IDENTITY, max_batch=1)
    assert not ok and reason


def test_write_engine_manifest_round_trips(tmp_path):
    path = tmp_path / "sub" / "model.engine.json"
    ec.write_engine_manifest(_manifest(), path)
    assert json.loads(path.read_text()) == _manifest() | {
        "built_at": json.loads(path.read_text())["built_at"]
    }
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.engine.json"
    path.write_text("old")

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(ec.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        ec.write_engine_manifest(_manifest(), path)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == [path.name]


# --- which cached engine is reused -----------------------------------------------------------------


def _cache(directory: Path, engine: bytes, max_batch: int = 16, sha: str | None = None) -> Path:
    import hashlib

    directory.mkdir(parents=True, exist_ok=True)
    (directory / ec.ENGINE_NAME).write_bytes(engine)
    manifest = {**_manifest(max_batch), "engine_sha256": sha or hashlib.sha256(engine).hexdigest()}
    ec.write_engine_manifest(manifest, directory / ec.ENGINE_MANIFEST_NAME)
    return directory / ec.ENGINE_NAME


def test_find_engine_takes_the_first_matching_directory(tmp_path):
    small = _cache(tmp_path / "a", b"small", max_batch=4)
    big = _cache(tmp_path / "b", b"big", max_batch=16)
    assert ec.find_engine([small.parent, big.parent], **IDENTITY, max_batch=4) == (small, "engine matches")
    assert ec.find_engine([small.parent, big.parent], **IDENTITY, max_batch=8) == (big, "engine matches")
    found, why = ec.find_engine([small.parent], **IDENTITY, max_batch=8)
    assert found is None and "up to 4" in why


def test_find_engine_refuses_an_engine_its_manifest_does_not_describe(tmp_path):
    engine = _cache(tmp_path, b"engine", sha="0" * 64)
    found, why = ec.find_engine([engine.parent], **IDENTITY, max_batch=1)
    assert found is None and "sha256 differs" in why


@pytest.mark.parametrize("manifest", [None, "not json", "[1, 2]"])
def test_find_engine_without_a_usable_manifest(tmp_path, manifest):
    (tmp_path / ec.ENGINE_NAME).write_bytes(b"engine")
    if manifest is not None:
        (tmp_path / ec.ENGINE_MANIFEST_NAME).write_text(manifest)
    found, why = ec.find_engine([tmp_path], **IDENTITY, max_batch=1)
    assert found is None and str(tmp_path) in why


def test_check_writable(tmp_path):
    ec.check_writable(tmp_path / "new" / "dir")
    assert os.listdir(tmp_path / "new" / "dir") == []  # the probe file is gone
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        ec.check_writable(tmp_path / "file" / "dir")


def test_build_lock_is_held_across_processes(tmp_path):
    import subprocess
    import sys

    probe = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'a+b')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    print('held')\n"
        "else:\n    print('free')\n"
    )

    def other() -> str:
        lock = str(tmp_path / ec.BUILD_LOCK_NAME)
        out = subprocess.run([sys.executable, "-c", probe, lock], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    with ec.build_lock(tmp_path):
        assert other() == "held"
    assert other() == "free"
