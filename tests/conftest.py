"""Fixtures shared across the test tree. Helpers that tests import live in `tests.support`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.nets import TINY, tiny_checkpoint


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", params=sorted(TINY))
def checkpoint(request, tmp_path_factory) -> Path:
    """A tiny random checkpoint of each official branch (see tests.support.nets)."""
    return tiny_checkpoint(request.param, tmp_path_factory.mktemp("ckpt") / f"{request.param}.pt")


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """{head: out_dir} with FP32 + FP16 ONNX for both heads (exporting takes seconds)."""
    from export.pipeline import ExportOptions, run_export

    out = {}
    for head in ("topk", "raw"):
        out_dir = tmp_path_factory.mktemp(f"{checkpoint.stem}-{head}")
        run_export(ExportOptions(checkpoint=checkpoint, out_dir=out_dir, head=head, top_k=100, fp16=True))
        out[head] = out_dir
    return out
