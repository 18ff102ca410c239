"""benchmarks/gpu.sh and gpu_bench.py on the CPU (both need a GPU to measure anything: unrun here):
the served model.json gpu_bench.py writes is one `yolor serve` accepts, with the top-K head the torch
backend then picks on the GPU; its TF32-off reference uses the per-op precision API without
warnings; gpu.sh's log keeps its last lines however slow tee is."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from service.manifest import load_manifest
from service.processing.heads import head_layout

ROOT = Path(__file__).resolve().parents[2]


def _gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.model
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


def _legacy_tf32_flags_warn(monkeypatch, torch) -> None:
    """`torch.backends.cudnn.allow_tf32` and `torch.backends.cuda.matmul.allow_tf32` warn when read
    or set, as in torch 2.9 (the installed torch may not)."""

    def legacy(*args: object) -> None:
        warnings.warn("allow_tf32 will be deprecated after Pytorch 2.9", UserWarning, stacklevel=2)

    monkeypatch.setattr(type(torch.backends.cudnn), "allow_tf32", property(legacy, legacy))
    matmul = type(torch.backends.cuda.matmul)
    get, set_ = matmul.__getattr__, matmul.__setattr__
    monkeypatch.setattr(
        matmul, "__getattr__", lambda self, n: legacy() if n == "allow_tf32" else get(self, n)
    )
    monkeypatch.setattr(
        matmul, "__setattr__", lambda self, n, v: legacy() if n == "allow_tf32" else set_(self, n, v)
    )


@pytest.mark.model
def test_the_numerics_reference_runs_with_tf32_off_through_the_new_api(monkeypatch):
    """From torch 2.9 the reference turns TF32 off through `fp32_precision` alone and restores it;
    the legacy flags, made to warn as in torch 2.9, would fail the call (warnings are errors)."""
    import torch

    if torch.__version__ < "2.9":
        pytest.skip("torch < 2.9 has only the legacy flags")
    gpu_bench = _gpu_bench()
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    _legacy_tf32_flags_warn(monkeypatch, torch)
    monkeypatch.setattr(gpu_bench, "DEVICE", torch.device("cpu"))
    seen = []

    class Reference:  # the unfused net, standing in: (B, 3, 8, 8) -> (B, 16, 6), as the backend
        def to(self, device: object) -> Reference:
            return self

        eval = cpu = lambda self: self

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((conv.fp32_precision, matmul.fp32_precision))
            return x[:, 0, :, :6].reshape(len(x), -1, 6)

    class Backend:
        def infer(self, batch: np.ndarray) -> np.ndarray:
            return batch[:, 0, :, :6].reshape(len(batch), -1, 6)

    inputs = np.random.default_rng(0).random((9, 3, 8, 8), dtype=np.float32) + 1
    try:
        result = gpu_bench.numerics(Backend(), Reference(), inputs)
    finally:
        after = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = before
    assert seen == [("ieee", "ieee")] * 3  # each third of the batch
    assert after == before
    assert result["passed"] and result["rel_error"] == 0


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.unit
def test_gpu_sh_waits_for_tee_to_write_the_last_line(tmp_path):
    """gpu.sh with a stand-in python (no GPU, no wheels: the bench 'fails' with 3 after writing its
    table, the served run and the tests are skipped) and a tee that starts 0.5 s late: the log must
    end with the table's last line once the script has returned, and the bench's status be kept."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    _executable(bin_dir / "tee", f'#!/usr/bin/env bash\nsleep 0.5\nexec {shutil.which("tee")} "$@"\n')
    python = bin_dir / "python"
    _executable(
        python,
        '#!/usr/bin/env bash\n[[ $1 == -c ]] && { echo "fake python"; exit 0; }\n'
        'printf "| stage | result |\\n| last | row |\\n" >"$OUT/gpu-bench.md"\nexit 3\n',
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "OUT": str(out),
        "PYTHON": str(python),
        "WORK": str(tmp_path / "work"),  # not /tmp/yolor-gpu
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,  # not a pipe: run() would then wait for tee too
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    log = (out / "gpu.log").read_text() if (out / "gpu.log").exists() else ""
    assert log.splitlines()[-1:] == ["| last | row |"], log
    assert "== gpu_bench.py exit 3" in log and done.returncode == 3
