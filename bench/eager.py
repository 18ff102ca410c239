"""`yolor bench torch`: the eager PyTorch forward of a net beside our fused ONNX export, same input
size, batch sizes and CPU threads.

Three ways to run the same weights, one after the other, per batch size:
- eager: the net as trained, unfused (BatchNorm and implicit layers separate), FP32, `torch.no_grad`
  (as the paper branch's `detect.py` runs its Darknet model);
- fused eager: `yolor.fuse_model` (BatchNorm and implicit knowledge folded into the convolutions);
- ONNX Runtime: the fused export as `yolor export` writes it (top-K head), one run at a time on the
  same threads (the server may run more at once: `yolor bench bare` measures that).
Imports torch and the export tooling (the `export` extra); the serving image has neither.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import yolor
from bench.timing import BatchResult, time_calls
from export.graph import ExportGraph
from export.onnx_export import INPUT_NAME, to_onnx
from service.backends.onnx_runtime import OnnxRuntimeBackend

log = logging.getLogger("yolor")

RUNNERS = ("eager", "fused eager", "onnxruntime")


@dataclass(frozen=True)
class TorchComparison:
    arch: str
    input_size: int
    threads: int
    results: dict[str, list[BatchResult]]  # runner -> per batch size

    def speedup(self, batch_size: int, runner: str = "onnxruntime", over: str = "eager") -> float:
        a = next(r for r in self.results[runner] if r.batch_size == batch_size)
        b = next(r for r in self.results[over] if r.batch_size == batch_size)
        return a.images_per_s / b.images_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "results"},
            "results": {name: [r.to_dict() for r in rows] for name, rows in self.results.items()},
        }

    def markdown(self) -> str:
        head = " | ".join(f"{name} images/s | {name} p50 ms" for name in RUNNERS)
        lines = [
            f"| batch | {head} | ONNX Runtime / eager |",
            "|---:|" + "---:|" * (2 * len(RUNNERS) + 1),
        ]
        sizes = [r.batch_size for r in self.results[RUNNERS[0]]]
        for i, size in enumerate(sizes):
            cells = " | ".join(
                f"{self.results[n][i].images_per_s:.2f} | {self.results[n][i].latency.p50_ms:.1f}"
                for n in RUNNERS
            )
            lines.append(f"| {size} | {cells} | {self.speedup(size):.2f}x |")
        return "\n".join(lines) + "\n"


def _torch_runner(model: torch.nn.Module, batch: np.ndarray) -> Callable[[], object]:
    x = torch.from_numpy(batch)

    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def compare(
    model: yolor.YOLOR,
    *,
    input_size: int,
    batch_sizes: Sequence[int],
    threads: int,
    min_seconds: float,
    min_calls: int = 5,
    top_k: int = 1000,
    progress: Callable[[str, BatchResult], None] | None = None,
) -> TorchComparison:
    """Each runner at each batch size on `threads` CPU threads (torch and ONNX Runtime alike); torch's
    own thread count is put back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _compare(model, input_size, batch_sizes, threads, min_seconds, min_calls, top_k, progress)
    finally:
        torch.set_num_threads(before)


def _compare(
    model: yolor.YOLOR,
    input_size: int,
    batch_sizes: Sequence[int],
    threads: int,
    min_seconds: float,
    min_calls: int,
    top_k: int,
    progress: Callable[[str, BatchResult], None] | None,
) -> TorchComparison:
    model = model.eval()
    fused = yolor.fuse_model(model)
    results: dict[str, list[BatchResult]] = {name: [] for name in RUNNERS}
    with tempfile.TemporaryDirectory(prefix="yolor-bench-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(to_onnx(ExportGraph(fused, "topk", top_k), input_size), path)
        backend = OnnxRuntimeBackend(
            path,
            head="topk",
            max_batch_size=max(batch_sizes),
            profile=(INPUT_NAME, input_size),
            device="cpu",
            intra_op_threads=threads,
        )
        try:
            for size in batch_sizes:
                batch = np.random.default_rng(size).random(
                    (size, 3, input_size, input_size), dtype=np.float32
                )
                runs = {
                    "eager": _torch_runner(model, batch),
                    "fused eager": _torch_runner(fused, batch),
                    "onnxruntime": lambda b=batch: backend.infer(b),  # type: ignore[misc]
                }
                for name, call in runs.items():
                    timed = time_calls(call, min_seconds=min_seconds, min_calls=min_calls, warmup_calls=3)
                    result = timed.result(size)
                    results[name].append(result)
                    if progress is not None:
                        progress(name, result)
        finally:
            backend.close()
    return TorchComparison(model.arch, input_size, threads, results)
