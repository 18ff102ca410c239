"""Small checkpoints and their exports, shared by the export tests (exporting takes seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import yolor
from export.pipeline import ExportOptions, run_export
from tests.model.test_fuse import randomize

# One net per official branch, shrunk so CI stays fast; yolor-e6 also covers DownC.
TINY = {
    "yolor_csp": dict(nc=4, depth=0.33, width=0.125),
    "yolor-e6": dict(nc=3, depth=0.33, width=0.1),
}
IMG_SIZE = {"yolor_csp": 128, "yolor-e6": 192}


def tiny_checkpoint(arch: str, path: Path) -> Path:
    """Random weights, with prediction logits spread wide  like a trained model's: a model
    whose scores all sit near one value makes NMS pick arbitrary survivors among near-ties, and
    no detection comparison (FP16 included) is meaningful on it."""
    torch.manual_seed(0)
    model = randomize(yolor.build_model(arch, **TINY[arch]))
    with torch.no_grad():
        for conv in model.net.head.preds:
            conv.weight.mul_(3.0)
    yolor.save_checkpoint(model, path, input_size=IMG_SIZE[arch])
    return path


@pytest.fixture(scope="session", params=sorted(TINY))
def checkpoint(request, tmp_path_factory) -> Path:
    return tiny_checkpoint(request.param, tmp_path_factory.mktemp("ckpt") / f"{request.param}.pt")


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """{head: out_dir} with FP32 + FP16 ONNX for both heads."""
    out = {}
    for head in ("topk", "raw"):
        out_dir = tmp_path_factory.mktemp(f"{checkpoint.stem}-{head}")
        run_export(ExportOptions(checkpoint=checkpoint, out_dir=out_dir, head=head, top_k=100, fp16=True))
        out[head] = out_dir
    return out
