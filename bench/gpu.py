"""`yolor bench gpu`: YOLOR on one CUDA GPU, the torch backend (FP16, CUDA graphs, pipelined copies)
beside eager PyTorch. Imports torch; needs no pydantic unless `model_dir` is set.

Random weights (`yolor.build_model(arch, nc=80)`, objectness bias set to OBJ_BIAS so that a served
run's NMS sees as few candidates as a trained net's would); speed does not depend on the weights'
values. Each row is timed after warm-up with host clocks around synchronous calls (the backend
returns only once its output is on the host; device-only loops call `torch.cuda.synchronize()`),
`bench.timing.time_calls` at the configured pace, inputs alternating between two random batches.
The stages, in order (a stage that would start with less than its need of the budget left is
skipped and says so; the report is rewritten after each):

  env, transfers   GPU, versions, host; pinned H2D / D2H and host copy bandwidth at max_batch's sizes
  model            params, conv GFLOP per image, the checkpoint (and, with model_dir, the served
                   folder: bench.served_model, the top-K head)
  pipeline_check   the backend's chunk/slot bookkeeping at full size, exactly (bench.gpu_checks)
  numerics         backend (FP16) against the unfused FP32 net (TF32 off) on one batch of 9
  backend          images/s and latency per batch size, copy_output True; max_batch also False
  backend_topk     the same with the top-K head picked on the GPU (how a top-K model is served)
  chunks           max_batch with graphs of 16 and of 32 (one chunk: no copy/compute overlap)
  device_only      fused FP16 channels_last on the GPU alone: eager and one CUDA graph (the ceiling)
  backend_eager    the backend with cuda_graphs=False
  unfused_eager    the plain model, FP32 and FP16, contiguous, eager (what `model(x)` gives)
  also             another arch (default yolor_p6, the main-branch P6) through the backend
  compile          the backend with torch.compile (minutes of compiling; only when asked)
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import yolor
from bench.gpu_checks import numerics, pipeline_check
from bench.gpu_measure import Timer, backend_rows, conv_gflop, device_row, gpu_info, transfers
from bench.gpu_report import GpuReport
from bench.timing import time_calls
from service.backends.torch_cuda import TorchCudaBackend, inference_forward, output_rows, prepare_model

log = logging.getLogger("yolor")

OBJ_BIAS = -10.0  # objectness logit of the random net: sigmoid ~ 5e-5, few NMS candidates
TOP_K = 300  # the export's default top-K head: what the served model (model.json) answers


@dataclass(frozen=True)
class GpuBenchConfig:
    arch: str = "yolor-p6"  # the paper-branch P6 (yolor_p6 is the main-branch one)
    also: str = "yolor_p6"  # a second arch at max_batch ("" for none)
    size: int = 1280
    batches: tuple[int, ...] = (1, 8, 32)
    max_batch: int = 32
    min_calls: int = 50
    min_seconds: float = 2.0
    max_seconds: float = 8.0  # a row stops after this once 5 calls are in
    budget_s: float = 240.0  # stages that would start later are skipped
    compile: bool = False
    workdir: Path | None = None  # the checkpoint (+ the served folder) here; None: a temporary one
    model_dir: bool = False  # write model.json for `yolor serve --backend torch` into workdir
    out: Path = Path("gpu-out")


def run_gpu_bench(config: GpuBenchConfig, *, clock: Callable[[], float] = time.monotonic) -> GpuReport:
    """Every stage the budget allows; the report, also written to `config.out`."""
    torch.backends.cudnn.benchmark = True
    report = GpuReport(config.out, config.budget_s, asdict(config), clock=clock)
    with tempfile.TemporaryDirectory(prefix="yolor-gpu-") as temp:
        workdir = config.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        _GpuBench(config, report, workdir).run()
    report.write()
    return report


def random_model(arch: str, size: int) -> yolor.YOLOR:
    """`arch` with random weights (seed 0), 80 classes, objectness bias OBJ_BIAS, input `size`."""
    torch.manual_seed(0)
    model = yolor.build_model(arch, nc=80)
    with torch.no_grad():
        head = model.net.head
        for conv in head.preds:
            assert conv.bias is not None
            conv.bias.view(head.na, head.no)[:, 4] = OBJ_BIAS
    model.input_size = size
    return model


class _GpuBench:
    def __init__(self, config: GpuBenchConfig, report: GpuReport, workdir: Path) -> None:
        self.c, self.report, self.workdir = config, report, workdir
        self.device = torch.device("cuda")  # one GPU: the backend's default cuda:0
        self.timer = _timer(config, min_calls=config.min_calls, warmup_calls=3)
        self.device_timer = _timer(config, min_calls=max(10, config.min_calls // 5), warmup_calls=2)
        self.top = max(*config.batches, config.max_batch)
        self.model: yolor.YOLOR | None = None
        self.checkpoint = workdir / "checkpoint.pt"
        self.inputs: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))

    def run(self) -> None:
        r, c = self.report, self.c
        r.stage("env", 0, lambda: gpu_info(self.device))
        r.stage("model", 30, self.model_stage)
        if not r.completed("model"):
            return
        rows, columns = r.stages["model"]["output_rows"], r.stages["model"]["output_columns"]
        r.stage("transfers", 20, lambda: transfers(self.device, c.size, rows, columns, c.max_batch))
        rng = np.random.default_rng(0)
        shape = (self.top, 3, c.size, c.size)
        self.inputs = (rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32))
        r.stage("pipeline_check", 30, self.pipeline_stage)
        stages: list[tuple[str, float, Callable[[], dict[str, Any]]]] = [
            ("backend", 60, self.backend_stage),
            ("backend_topk", 45, self.topk_stage),
            ("chunks", 45, self.chunks_stage),
            ("device_only", 30, self.device_stage),
            ("backend_eager", 30, self.eager_backend_stage),
            ("unfused_eager", 40, self.unfused_stage),
        ]
        if c.also:
            stages.append(("also", 45, self.also_stage))
        if c.compile:
            stages.append(("compile", 150, self.compile_stage))
        for name, need_s, stage in stages:
            r.stage(name, need_s, stage)
            torch.cuda.empty_cache()

    def _build(self, arch: str, checkpoint: Path) -> tuple[yolor.YOLOR, dict[str, Any]]:
        model = random_model(arch, self.c.size)
        yolor.save_checkpoint(model, checkpoint, input_size=self.c.size)
        info = {
            "arch": arch,
            "branch": model.spec.branch,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "checkpoint": str(checkpoint),
            "checkpoint_mb": checkpoint.stat().st_size / 1e6,
            "output_rows": output_rows(self.c.size, model.strides, model.spec.num_anchors),
            "output_columns": 5 + model.nc,
            "conv_gflop_per_image": conv_gflop(model.to(self.device), self.c.size),
        }
        return model.cpu(), info

    def model_stage(self) -> dict[str, Any]:
        self.model, info = self._build(self.c.arch, self.checkpoint)
        if self.c.model_dir:
            from bench.served_model import write_served_model_dir  # pydantic: only when asked

            source = {"note": "random weights from yolor bench gpu", "obj_bias": OBJ_BIAS}
            write_served_model_dir(self.model, self.checkpoint, input_size=self.c.size,
                                   max_batch=self.c.max_batch, top_k=TOP_K, source=source)  # fmt: skip
            info["model_dir"] = str(self.workdir)
        return info

    def pipeline_stage(self) -> dict[str, Any]:
        return pipeline_check(self.checkpoint, self.c.size, self.top, self.inputs[0], self.device)

    def _backend(self, checkpoint: Path | None = None, **options: Any) -> TorchCudaBackend:
        return TorchCudaBackend(checkpoint or self.checkpoint, input_size=self.c.size,
                                max_batch_size=self.top, device=str(self.device), **options)  # fmt: skip

    def _rows(self, backend: TorchCudaBackend, batches: list[int], label: str) -> list[dict[str, Any]]:
        return backend_rows(backend, self.timer, self.inputs, batches, label)

    def backend_stage(self) -> dict[str, Any]:
        backend = self._backend()
        try:
            label = f"backend, graphs {graph_sizes(backend)}"
            assert self.model is not None
            model = self.model
            self.report.stage("numerics", 0, lambda: numerics(backend, model, self.inputs[0], self.device))
            out: dict[str, Any] = {"device": backend.device, "graph_sizes": list(backend.graph_sizes)}
            out["rows"] = self._rows(backend, list(self.c.batches), label)
            backend.copy_output = False
            out["rows"] += self._rows(backend, [self.c.max_batch], label)
            return out
        finally:
            backend.close()

    def topk_stage(self) -> dict[str, Any]:
        """As served: the K best candidates picked on the GPU, ~7 KB per image to copy back, not the
        raw rows (~35 MB per image at 1280 px)."""
        backend = self._backend(top_k=TOP_K)
        try:
            label = f"backend, top-{TOP_K} on the GPU, graphs {graph_sizes(backend)}"
            return {"rows": self._rows(backend, list(self.c.batches), label)}
        finally:
            backend.close()

    def chunks_stage(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": []}
        for largest in (16, 32):
            if self.report.left() < 25 or largest > self.top:
                break
            backend = self._backend(graph_sizes=(largest,))
            try:
                label = f"backend, graphs {graph_sizes(backend)}"
                for copy_output in (True, False):
                    backend.copy_output = copy_output
                    out["rows"] += self._rows(backend, [self.c.max_batch], label)
            finally:
                backend.close()
        return out

    def device_stage(self) -> dict[str, Any]:
        assert self.model is not None
        fused, anchors = prepare_model(self.model, self.device)
        forward = inference_forward(fused, anchors)
        out: dict[str, Any] = {"rows": [], "errors": []}
        for b in sorted({min(8, self.top), self.c.max_batch}):
            x = torch.from_numpy(self.inputs[0][:b]).to(self.device, torch.float16)
            x = x.contiguous(memory_format=torch.channels_last)
            for graph in (False, True):
                label = f"fused fp16 channels_last, {'CUDA graph' if graph else 'eager'}"
                timer = self.timer if graph else self.device_timer
                try:
                    out["rows"].append(device_row(forward, x, timer, label, graph=graph))
                except Exception as e:  # keep the other rows
                    out["errors"].append(f"{label} b{b}: {type(e).__name__}: {e}")
                    log.error("  %s", out["errors"][-1])
        return out

    def eager_backend_stage(self) -> dict[str, Any]:
        backend = self._backend(cuda_graphs=False)
        try:
            label = f"backend, eager {graph_sizes(backend)}"
            return {"rows": self._rows(backend, [1, self.c.max_batch], label)}
        finally:
            backend.close()

    def unfused_stage(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": []}
        for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16")):
            net = yolor.build_model(self.c.arch, nc=80).to(self.device, dtype).eval()
            label = f"unfused {name} eager" + (" (TF32 convs, torch default)" if name == "fp32" else "")
            for b in self.c.batches:
                if self.report.left() < 10:
                    break
                x = torch.from_numpy(self.inputs[0][:b]).to(self.device, dtype)
                out["rows"].append(device_row(net, x, self.device_timer, label, graph=False))
            del net
            torch.cuda.empty_cache()
        return out

    def also_stage(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="yolor-also-") as other:
            checkpoint = Path(other) / "checkpoint.pt"
            _, info = self._build(self.c.also, checkpoint)
            backend = self._backend(checkpoint)
            try:
                backend.copy_output = False
                label = f"{self.c.also} backend, graphs {graph_sizes(backend)}"
                info["rows"] = self._rows(backend, [self.c.max_batch], label)
            finally:
                backend.close()
        return info

    def compile_stage(self) -> dict[str, Any]:
        backend = self._backend(graph_sizes=(min(8, self.top),), compile_model=True)
        try:
            backend.copy_output = False
            label = f"backend, compiled, graphs {graph_sizes(backend)}"
            return {"rows": self._rows(backend, [self.c.max_batch], label)}
        finally:
            backend.close()


def _timer(config: GpuBenchConfig, *, min_calls: int, warmup_calls: int) -> Timer:
    return functools.partial(
        time_calls,
        min_calls=min_calls,
        min_seconds=config.min_seconds,
        max_seconds=config.max_seconds,
        warmup_calls=warmup_calls,
    )


def graph_sizes(backend: Any) -> str:
    """The backend's graph sizes in words: "1..8", or the list."""
    got = list(backend.graph_sizes)
    return f"{got[0]}..{got[-1]}" if got == list(range(got[0], got[-1] + 1)) and len(got) > 1 else str(got)
