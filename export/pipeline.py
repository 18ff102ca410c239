"""`yolor export`: checkpoint -> fused model -> ONNX (FP32, optional FP16) -> optional TensorRT engine.

Every artifact is written into a private staging folder next to the output folder and moved in only
after every step (validation included) succeeded, so a failed export leaves no half-written artifact.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

import yolor
from export.graph import ExportGraph
from export.int8 import (
    INT8_FILES,
    CalibMethod,
    CalibrationError,
    Int8Target,
    load_calibration,
    quantize,
    val_images,
)
from export.onnx_export import INPUT_NAME, output_shape, to_onnx
from export.validate import (
    Int8Gate,
    PostprocessParams,
    candidates,
    fp32_reference,
    photo_batch,
    validate_int8,
    validate_onnx,
)
from service.backends.artifacts import ONNX_INT8, ONNX_INT8_TENSORRT, onnx_key, sha256_file
from service.backends.engine_cache import ENGINE_MANIFEST_NAME, ENGINE_NAME
from service.manifest import MANIFEST_NAME, Artifact, InputSpec, ModelManifest, OutputSpec
from service.processing.heads import HEADS, Head, head_layout

log = logging.getLogger(__name__)
INT8_KEYS: dict[Int8Target, str] = {"onnxruntime": ONNX_INT8, "tensorrt": ONNX_INT8_TENSORRT}

ONNX_NAME, ONNX_FP16_NAME = "model.onnx", "model.fp16.onnx"
ALL_ARTIFACTS = (
    ONNX_NAME, ONNX_FP16_NAME, *INT8_FILES.values(), ENGINE_NAME, ENGINE_MANIFEST_NAME, MANIFEST_NAME
)  # fmt: skip
GATE_IMAGES = 16  # calibration (in-sample) and --val-data images the INT8 gate runs beside the photos


class ExportError(RuntimeError):
    """A failed export; nothing was written to the output folder."""


@dataclass
class ExportOptions:
    checkpoint: Path
    out_dir: Path
    arch: str | None = None
    img_size: int | None = None
    head: Head = "topk"
    top_k: int = 1000
    fp16: bool = False
    engine: bool = False
    max_batch: int = 16
    opt_batch: int | None = None
    workspace_mb: int = 4096
    timing_cache: Path | None = None
    opset: int = 18
    postprocess: PostprocessParams = field(default_factory=PostprocessParams)
    int8: Int8Options | None = None  # also write INT8 Q/DQ model(s), calibrated and gated


@dataclass(frozen=True)
class Int8Options:
    calib: Path  # image folder or dataset
    calib_count: int = 256
    method: CalibMethod = "percentile"
    targets: tuple[Int8Target, ...] = ("onnxruntime",)
    val_data: Path | None = None  # labelled set for the mAP gate
    gate: Int8Gate = field(default_factory=Int8Gate)


class Progress:
    """Numbered step log with timings: the slow steps say what they are doing while they do it."""

    def __init__(self, total: int) -> None:
        self.total, self.index = total, 0

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.index += 1
        log.info("[%d/%d] %s ...", self.index, self.total, what)
        start = time.perf_counter()
        yield
        log.info("[%d/%d] %s done in %.1fs", self.index, self.total, what, time.perf_counter() - start)


def _versions(opset: int) -> dict[str, Any]:
    out: dict[str, Any] = {"opset": opset}
    for dist in ("yolor-serving", "torch", "onnx", "onnxruntime", "onnxslim", "onnxscript"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _artifact(path: Path, precision: Literal["fp32", "fp16", "int8"]) -> Artifact:
    return Artifact(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size, precision=precision)


def _check_options(opts: ExportOptions, model: yolor.YOLOR) -> int:
    img_size = opts.img_size or model.input_size
    if img_size % model.max_stride or img_size < model.max_stride:
        raise ExportError(
            f"--img-size {img_size} must be a positive multiple of {model.max_stride} for {model.arch}"
        )
    if opts.head not in HEADS:
        raise ExportError(f"unknown head {opts.head!r}; choose topk or raw")
    if opts.top_k < 1 or opts.max_batch < 1:
        raise ExportError("--top-k and --max-batch must be >= 1")
    return img_size


def _ensure_engine_possible() -> None:
    from service.backends.tensorrt_build import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable as e:
        raise ExportError(f"--engine: {e}") from None


def run_export(opts: ExportOptions) -> ModelManifest:
    """Run the whole export; returns the manifest written to `opts.out_dir/model.json`."""
    if opts.engine:
        _ensure_engine_possible()  # fail before minutes of work, not after
    int8_steps = 1 + 2 * len(opts.int8.targets) if opts.int8 else 0
    progress = Progress(5 + opts.fp16 * 2 + opts.engine + int8_steps)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=opts.out_dir))
    try:
        manifest = _export_into(staging, opts, progress)
        _commit(staging, opts.out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", ", ".join(sorted(a.file for a in manifest.artifacts.values())))
    return manifest


def _export_into(staging: Path, opts: ExportOptions, progress: Progress) -> ModelManifest:
    with progress.step(f"load {opts.checkpoint}"):
        model = yolor.load_model(opts.checkpoint, arch=opts.arch)
        source = {"checkpoint": opts.checkpoint.name, "sha256": sha256_file(opts.checkpoint)}
    img_size = _check_options(opts, model)
    with progress.step("fuse BatchNorm and implicit knowledge"):
        fused = yolor.fuse_model(model)
    artifacts: dict[str, Artifact] = {}
    validation: dict[str, Any] = {}
    precisions: list[Literal["fp32", "fp16"]] = ["fp32", "fp16"] if opts.fp16 else ["fp32"]
    shape: list[int | str] = []
    for precision in precisions:
        graph = ExportGraph(fused, opts.head, opts.top_k, fp16=precision == "fp16")
        path = staging / (ONNX_NAME if precision == "fp32" else ONNX_FP16_NAME)
        with progress.step(f"export + simplify {precision} ONNX (opset {opts.opset})"):
            proto = to_onnx(graph, img_size, opts.opset)
            onnx.save(proto, path)
            shape = output_shape(proto)
        with progress.step(f"validate {precision} ONNX with ONNX Runtime"):
            validation[precision] = validate_onnx(
                str(path), model, graph, img_size, precision, opts.postprocess
            )
        artifacts["onnx" if precision == "fp32" else "onnx_fp16"] = _artifact(path, precision)
    if opts.int8 is not None:
        truncated = opts.head == "topk" and opts.top_k < candidates(model, img_size)
        records = _export_int8(staging, opts, opts.int8, progress, model.class_names, img_size, truncated)
        for target, (artifact, record) in records.items():
            artifacts[INT8_KEYS[target]] = artifact
            validation[f"int8_{target}"] = record
    manifest = ModelManifest(
        arch=model.arch,
        branch=model.spec.branch,
        nc=model.nc,
        class_names=model.class_names,
        depth=model.scaling.depth,
        width=model.scaling.width,
        input_size=img_size,
        strides=list(model.strides),
        anchors=model.anchors.tolist(),
        head=opts.head,
        top_k=int(shape[1]) if opts.head == "topk" else None,
        output=OutputSpec(
            name=head_layout(opts.head).output_name,
            shape=shape,
            columns=head_layout(opts.head).columns(model.class_names),
        ),
        max_batch=opts.max_batch,
        artifacts=artifacts,
        source=source,
        versions=_versions(opts.opset),
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        validation=validation,
    )
    if opts.engine:
        with progress.step("build TensorRT engine"):
            engine_source = artifacts[onnx_key(artifacts, "fp16" if opts.fp16 else "fp32")]
            artifacts["engine"] = _build_engine(staging, opts, engine_source)
        manifest = manifest.model_copy(update={"artifacts": artifacts})
    with progress.step("write manifest"):
        manifest.write(staging)
    return manifest


def _export_int8(
    staging: Path,
    opts: ExportOptions,
    int8: Int8Options,
    progress: Progress,
    class_names: list[str],
    img_size: int,
    truncated: bool,
) -> dict[Int8Target, tuple[Artifact, dict[str, Any]]]:
    """Calibrate and run the FP32 reference once, then quantize and gate each target's flavour."""
    what = f"read up to {int8.calib_count} calibration images from {int8.calib}, run the FP32 reference"
    with progress.step(what):
        pad = InputSpec().letterbox_pad
        try:
            calibration = load_calibration(int8.calib, int8.calib_count, img_size, pad)
            images = {
                "photos": photo_batch(img_size),
                "calibration": np.concatenate(calibration.tensors[:GATE_IMAGES]),
            }
            if int8.val_data is not None:
                images["val"] = val_images(int8.val_data, GATE_IMAGES, img_size, pad)
        except CalibrationError as e:
            raise ExportError(str(e)) from None
        reference = fp32_reference(
            staging / ONNX_NAME,
            images,
            head=opts.head,
            img_size=img_size,
            class_names=class_names,
            val_data=int8.val_data,
        )
    done: dict[Int8Target, tuple[Artifact, dict[str, Any]]] = {}
    for target in int8.targets:
        path = staging / INT8_FILES[target]
        with progress.step(f"quantize to INT8 for {target} ({int8.method} calibration)"):
            quantization = quantize(staging / ONNX_NAME, path, calibration, int8.method, target)
        with progress.step(f"validate {target} INT8 ONNX against FP32"):
            record = validate_int8(
                path,
                reference,
                head=opts.head,
                img_size=img_size,
                truncated=truncated,
                images=images,
                post=opts.postprocess,
                gate=int8.gate,
                class_names=class_names,
            )
        done[target] = (_artifact(path, "int8"), {**record, "quantization": quantization})
    return done


def _build_engine(staging: Path, opts: ExportOptions, source: Artifact) -> Artifact:
    from service.backends.engine_cache import write_engine_manifest
    from service.backends.tensorrt_build import EngineOptions, build_engine

    options = EngineOptions(opts.max_batch, opts.opt_batch, opts.workspace_mb, opts.timing_cache)
    engine_path = staging / ENGINE_NAME
    manifest = build_engine(
        staging / source.file, engine_path, options, onnx_sha256=source.sha256, precision=source.precision
    )
    write_engine_manifest(manifest, staging / ENGINE_MANIFEST_NAME)
    return _artifact(engine_path, source.precision)


def _commit(staging: Path, out_dir: Path) -> None:
    """Move the new artifacts in; drop artifacts of an earlier export that this one did not make
    (a stale model.engine must not sit next to a new model.onnx)."""
    produced = {p.name for p in staging.iterdir()}
    for name in ALL_ARTIFACTS:
        if name not in produced and (out_dir / name).exists():
            (out_dir / name).unlink()
    for name in [*sorted(produced - {MANIFEST_NAME}), MANIFEST_NAME]:  # manifest last
        os.replace(staging / name, out_dir / name)


__all__ = ["INPUT_NAME", "ExportError", "ExportOptions", "run_export"]
