"""Locate a model artifact listed in the manifest and check it is the file the manifest describes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from service.manifest import Artifact, ManifestError, ModelManifest

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


ONNX_INT8 = "onnx_int8"  # Q/DQ, uint8 activations: ONNX Runtime's CPU kernels
ONNX_INT8_TENSORRT = "onnx_int8_tensorrt"  # Q/DQ, symmetric int8: TensorRT's explicit quantization


def onnx_key(artifacts: Mapping[str, Artifact], precision: str, *, tensorrt: bool = False) -> str:
    """The ONNX artifact to run or build an engine from for `precision`: FP16 when wanted and
    exported (else FP32); INT8 only ever when asked for, and then that one (it may be missing)."""
    if precision == "int8":
        return ONNX_INT8_TENSORRT if tensorrt else ONNX_INT8
    return "onnx_fp16" if precision == "fp16" and "onnx_fp16" in artifacts else "onnx"


def resolve_artifact(model_dir: Path, manifest: ModelManifest, key: str, *, verify: bool = True) -> Path:
    """Path of `manifest.artifacts[key]` inside `model_dir`.

    Raises ManifestError when the manifest lists no such artifact, the file is missing, or (with
    `verify`) its size or sha256 differ from the manifest's: a half-copied or swapped model must not
    be served under the manifest's name.
    """
    artifact = manifest.artifacts.get(key)
    if artifact is None:
        raise ManifestError(
            f"{model_dir}/model.json lists no {key!r} artifact (has {sorted(manifest.artifacts)})"
        )
    path = Path(model_dir) / artifact.file
    if not path.is_file():
        raise ManifestError(f"{path} is listed in model.json but missing")
    if verify:
        size = path.stat().st_size
        if size != artifact.bytes:
            raise ManifestError(f"{path} has {size} bytes, model.json says {artifact.bytes}")
        digest = sha256_file(path)
        if digest != artifact.sha256:
            raise ManifestError(
                f"{path} sha256 {digest[:12]}… does not match model.json ({artifact.sha256[:12]}…)"
            )
    return path
