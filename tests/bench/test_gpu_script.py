"""benchmarks/gpu_bench.py's served model: the model.json it writes is one `yolor serve` accepts, with
the top-K head the torch backend then picks on the GPU (the script itself needs a GPU: unrun here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from service.manifest import load_manifest
from service.processing.heads import head_layout

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.model


def _gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("size", "top_k"), [(64, 252), (128, 300)])  # 252 rows at 64 px: all of them
def test_the_served_model_json_is_a_top_k_model(tmp_path, size, top_k):
    import yolor

    gpu_bench = _gpu_bench()
    model = yolor.build_model("yolor-ssss-s2d", nc=80)
    checkpoint = tmp_path / "checkpoint.pt"
    yolor.save_checkpoint(model, checkpoint, input_size=size)
    gpu_bench.write_model_dir(model, checkpoint, size, 32)
    manifest = load_manifest(tmp_path)
    assert (manifest.head, manifest.top_k, manifest.max_batch) == ("topk", top_k, 32)
    assert tuple(manifest.output.shape[1:]) == head_layout("topk").image_shape(80, top_k)
    assert manifest.artifacts["checkpoint"].file == "checkpoint.pt"
