"""The model folder `yolor bench gpu --model-dir` leaves for `yolor serve --backend torch`: its
checkpoint, a `model.json` written by `ModelManifest.write` (as `yolor export` writes one), and a
placeholder for the 'onnx' artifact every manifest lists (the torch backend never reads it).

The manifest declares the top-K head, K = min(top_k, raw rows): the torch backend, given the
manifest's `top_k`, picks those candidates on the GPU, as the exported graph would. Needs pydantic
(the `serve` extra), not torch at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from service.backends.artifacts import sha256_file
from service.backends.torch_cuda import output_rows
from service.manifest import Artifact, ModelManifest, OutputSpec
from service.processing.heads import head_layout

if TYPE_CHECKING:
    from yolor import YOLOR

PLACEHOLDER_NAME = "model.onnx"


def _artifact(path: Path, precision: Literal["fp32", "fp16", "int8"] = "fp32") -> Artifact:
    return Artifact(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size, precision=precision)


def served_manifest(
    model: YOLOR,
    checkpoint: Path,
    *,
    input_size: int,
    max_batch: int,
    top_k: int,
    source: dict[str, Any] | None = None,
) -> ModelManifest:
    """The manifest of `model` saved at `checkpoint`, served at `input_size` with the top-K head.
    The placeholder 'onnx' artifact must already be beside the checkpoint."""
    import torch

    k = min(top_k, output_rows(input_size, model.strides, model.spec.num_anchors))
    layout = head_layout("topk")
    output = OutputSpec(
        name=layout.output_name, shape=["batch", k, 6], columns=layout.columns(model.class_names)
    )
    weights = _artifact(checkpoint)
    return ModelManifest(
        arch=model.arch,
        branch=model.spec.branch,
        nc=model.nc,
        class_names=list(model.class_names),
        depth=model.scaling.depth,
        width=model.scaling.width,
        input_size=input_size,
        strides=list(model.strides),
        anchors=model.anchors.tolist(),
        head="topk",
        top_k=k,
        output=output,
        max_batch=max_batch,
        artifacts={
            "onnx": _artifact(checkpoint.parent / PLACEHOLDER_NAME),
            "checkpoint": weights,
        },
        source={"checkpoint": checkpoint.name, "sha256": weights.sha256, **(source or {})},
        versions={"torch": torch.__version__},
    )


def write_served_model_dir(
    model: YOLOR,
    checkpoint: Path,
    *,
    input_size: int,
    max_batch: int,
    top_k: int,
    source: dict[str, Any] | None = None,
) -> ModelManifest:
    """Write the placeholder and `model.json` beside `checkpoint`; the manifest written."""
    placeholder = checkpoint.parent / PLACEHOLDER_NAME
    placeholder.write_bytes(b"placeholder: yolor bench gpu serves this model with the torch backend\n")
    manifest = served_manifest(
        model, checkpoint, input_size=input_size, max_batch=max_batch, top_k=top_k, source=source
    )
    manifest.write(checkpoint.parent)
    return manifest
