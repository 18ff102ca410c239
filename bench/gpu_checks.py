"""The two correctness checks of `yolor bench gpu`, run before any speed is believed:

- the pipeline check: the torch backend at full size with its net replaced by an echo of its input
  (each image's pixels, repeated and cut to the output's shape): every image must come back in
  place, exactly, whatever the chunk and slot each went through;
- numerics: the backend (fused, FP16) against the unfused FP32 net, TF32 off, on one batch.

Imports torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.backends.torch_cuda import TorchCudaBackend, output_rows

Forward = Callable[[torch.Tensor], torch.Tensor]


def echo_forward(rows: int, columns: int) -> Forward:
    """x (B, ...) -> (B, rows, columns) float32: each image's values in order, repeated to fill the
    rows and cut. Any image or row that lands in the wrong place shows."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.float().reshape(len(x), -1)
        repeats = -(-rows * columns // flat.shape[1])  # ceil
        return flat.repeat(1, repeats)[:, : rows * columns].view(-1, rows, columns)

    return forward


def echo_expected(batch: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """What the backend must answer for `batch` (B, 3, S, S) float32 with `echo_forward` as its net:
    the images rounded to FP16 (the backend's input conversion), echoed as `echo_forward` does."""
    flat = batch.astype(np.float16).astype(np.float32).reshape(len(batch), -1)
    return np.tile(flat, -(-rows * columns // flat.shape[1]))[:, : rows * columns].reshape(-1, rows, columns)


def echo_batches(max_batch: int) -> list[tuple[int, bool]]:
    """(batch size, copy_output) of the pipeline check: a remainder chunk, the full batch, one image,
    one default graph; each with and without the output copy in turn."""
    return [(min(n, max_batch), copy) for n, copy in ((29, True), (max_batch, False), (1, True), (8, False))]


def pipeline_check(
    checkpoint: Path, size: int, max_batch: int, inputs: np.ndarray, device: torch.device
) -> dict[str, Any]:
    """The backend at full size with its net replaced by an echo: exact, image by image."""

    def make_echo(model: Any, anchors: torch.Tensor) -> Forward:
        return echo_forward(output_rows(size, model.strides, anchors.shape[1]), 5 + int(model.nc))

    backend = TorchCudaBackend(
        checkpoint, input_size=size, max_batch_size=max_batch, device=str(device), make_forward=make_echo
    )
    rows, columns = backend.output_shape
    assert rows is not None and columns is not None  # the torch backend's output has no free axis
    checks: list[dict[str, Any]] = []
    try:
        for n, copy_output in echo_batches(max_batch):
            backend.copy_output = copy_output
            batch = inputs[-n:] if len(checks) % 2 else inputs[:n]  # other images at the same rows
            got = backend.infer(batch)
            bad = int((got != echo_expected(batch, rows, columns)).any(axis=(1, 2)).sum())
            checks.append({"batch": n, "copy_output": copy_output, "images_wrong": bad})
    finally:
        backend.close()
    return {"passed": all(c["images_wrong"] == 0 for c in checks), "checks": checks}


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """cuDNN convolutions and cuBLAS matmuls in full FP32 inside, restored after. From torch 2.9 only
    through the per-op `fp32_precision`: there the legacy `allow_tf32` flags warn (2.9), or fail when
    read after the new API has set a state they cannot show (2.13)."""
    cudnn: Any = torch.backends.cudnn  # its `conv` is not in the stubs
    matmul = torch.backends.cuda.matmul
    flags: list[tuple[Any, str, object]]
    if torch.__version__ >= "2.9":  # a TorchVersion: compared as a version, not as a string
        flags = [(cudnn.conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    else:
        flags = [(cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in flags]
    for owner, name, off in flags:
        setattr(owner, name, off)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(flags, saved, strict=True):
            setattr(owner, name, value)


NUMERICS_TOLERANCE = {"box_max_rel": 5e-3, "score_max_abs": 1e-2}  # FP16 net, float32 decode


def numerics(backend: Any, model: Any, inputs: np.ndarray, device: torch.device) -> dict[str, Any]:
    """`backend.infer` of the first 9 images against `model` (the unfused FP32 net, moved to `device`
    and back to the CPU after) in thirds, TF32 off; passed when within NUMERICS_TOLERANCE."""
    batch = inputs[:9]
    got = backend.infer(batch)
    reference = model.to(device).eval()
    try:
        with tf32_off(), torch.inference_mode():
            want = torch.cat(
                [reference(torch.from_numpy(b).to(device)).cpu() for b in np.array_split(batch, 3)]
            ).numpy()
    finally:
        model.cpu()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    diff = np.abs(got.astype(np.float64) - want)
    result: dict[str, Any] = {
        "batch": len(batch),
        "finite": bool(np.isfinite(got).all()),
        "rel_error": float(np.linalg.norm(diff) / np.linalg.norm(want)),
        "box_max_abs_px": float(diff[..., :4].max()),
        "box_max_rel": float((diff[..., :4] / np.maximum(np.abs(want[..., :4]), 1.0)).max()),
        "score_max_abs": float(diff[..., 4:].max()),
        "tolerance": NUMERICS_TOLERANCE,
    }
    result["passed"] = result["finite"] and all(result[k] <= v for k, v in NUMERICS_TOLERANCE.items())
    return result
