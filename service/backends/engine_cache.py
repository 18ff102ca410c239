"""The engine directory: which cached TensorRT engine may be reused, and how one is written there.

A directory holds `model.engine` and its manifest `model.engine.json` (what it was built from and
for: ONNX sha256, TensorRT version, GPU, profile, the engine's own sha256). An engine is reused only
when its manifest matches what the server needs and describes that very file; a build writes the
engine, then its manifest, each atomically, one process at a time. Pure file work: nothing here
imports TensorRT, so it runs (and is tested) anywhere. Building is `tensorrt_build`'s job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "BUILD_LOCK_NAME", "ENGINE_MANIFEST_FORMAT", "ENGINE_MANIFEST_NAME", "ENGINE_NAME", "Shape4",
    "atomic_write", "build_lock", "check_writable", "engine_matches", "find_engine", "make_engine_manifest",
    "read_engine_manifest", "write_engine_manifest",
]  # fmt: skip

log = logging.getLogger(__name__)

ENGINE_MANIFEST_FORMAT = "yolor-serving/engine/1"
ENGINE_NAME, ENGINE_MANIFEST_NAME = "model.engine", "model.engine.json"  # beside model.json, or in engine_dir
BUILD_LOCK_NAME = ".model.engine.lock"

Shape4 = tuple[int, int, int, int]


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_engine_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Write the engine manifest as JSON, atomically."""
    atomic_write(Path(path), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def read_engine_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at `path`, or None when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def make_engine_manifest(
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    input_name: str,
    shapes: tuple[Shape4, Shape4, Shape4],
    workspace_mb: int,
    precision: str,
    onnx_sha256: str,
    engine_sha256: str,
    build_seconds: float,
    timing_cache: Path,
) -> dict[str, Any]:
    """The manifest dict `tensorrt_build.build_engine` returns and `engine_matches` checks."""
    lo, opt, hi = shapes
    return {
        "format": ENGINE_MANIFEST_FORMAT,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "profile": {"input": input_name, "min": list(lo), "opt": list(opt), "max": list(hi)},
        "workspace_mb": workspace_mb,
        "precision": precision,
        "onnx_sha256": onnx_sha256,
        "engine_sha256": engine_sha256,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(build_seconds, 3),
        "timing_cache": str(timing_cache),
    }


def engine_matches(
    manifest: dict[str, Any],
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    max_batch: int,
) -> tuple[bool, str]:
    """Whether an existing engine can be reused; otherwise (False, why it must be rebuilt)."""
    if manifest.get("format") != ENGINE_MANIFEST_FORMAT:
        return False, f"engine manifest format is {manifest.get('format')!r}, not {ENGINE_MANIFEST_FORMAT!r}"
    wanted = {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
    }
    for key, value in wanted.items():
        if manifest.get(key) != value:
            return False, f"engine was built for {key} {manifest.get(key)!r}, but {value!r} is needed"
    try:
        built_max = int(manifest["profile"]["max"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return False, "engine manifest has no usable profile max shape"
    if built_max < max_batch:
        return False, f"engine profile allows batches up to {built_max}, {max_batch} is required"
    return True, "engine matches"


def find_engine(directories: list[Path], **wanted: Any) -> tuple[Path | None, str]:
    """The first `model.engine` in `directories` whose engine manifest matches `wanted` (the keywords
    of `engine_matches`) and describes that very file (its sha256: a build killed between the engine
    and its manifest pairs them wrongly), and why none did."""
    from service.backends.artifacts import sha256_file

    why = f"no engine in {', '.join(map(str, directories))}"
    for directory in directories:
        meta = read_engine_manifest(directory / ENGINE_MANIFEST_NAME)
        engine = directory / ENGINE_NAME
        if engine.is_file() and meta is not None:
            matches, why = engine_matches(meta, **wanted)
            if matches and sha256_file(engine) != meta.get("engine_sha256"):
                matches, why = False, f"{engine} is not the engine its manifest describes (sha256 differs)"
            if matches:
                return engine, why
    return None, why


def check_writable(directory: Path) -> None:
    """Create `directory` if needed and prove a file can be made in it; raises OSError otherwise."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
        pass


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """One build per engine directory at a time: with YOLOR_WORKERS > 1 every worker starts at once;
    the first builds, the others wait here and then find its engine. The lock goes with the holder's
    process, so a killed build does not block the next start."""
    import fcntl

    with open(directory / BUILD_LOCK_NAME, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is building the TensorRT engine in %s; waiting for it", directory)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock
