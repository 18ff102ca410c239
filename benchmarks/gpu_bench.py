"""YOLOR on one CUDA GPU: the torch backend (FP16, CUDA graphs, pipelined copies) beside eager PyTorch.

    OUT=./gpu-out python benchmarks/gpu_bench.py [--arch yolor-p6] [--size 1280] [--budget-s 240]

Prepared for the lent H200 (`benchmarks/gpu.sh` runs it) and NOT run on any GPU yet: no number from
it exists in this repository. Needs torch with CUDA, numpy and this repository on PYTHONPATH; no
fastapi or pydantic (when pydantic is missing, `service.backends`' package __init__, which imports
the factory and through it pydantic, is skipped: the bench needs only `base` and `torch_cuda`).

Random weights (`yolor.build_model(arch, nc=80)`, objectness bias set to -10 so that a served run's
NMS sees as few candidates as a trained net's would); speed does not depend on the weights' values.
Stages, each timed after warm-up with host clocks around synchronous calls (the backend returns
only once its output is on the host; device-only loops call `torch.cuda.synchronize()`), at least
`--min-calls` calls and `--min-seconds` per row, inputs alternating between two random batches:

  env, transfers   GPU, versions; pinned H2D / D2H and host copy bandwidth at batch 32's sizes
  model            params, conv GFLOP per image, the checkpoint (and, with --model-dir, a served dir:
                   a top-K model.json, K = 300)
  pipeline_check   the backend's chunk/slot bookkeeping at full size, exactly: the net replaced by an
                   echo of its input, every image must come back in place (batches 29, 32, 1, 8,
                   with and without the output copy)
  numerics         backend (FP16) against the unfused FP32 net (TF32 off) on one batch of 9
  backend          images/s and latency per batch size, copy_output True; batch 32 also False
  backend_topk     the same with the top-300 head picked on the GPU (how a top-K model is served)
  chunks           batch 32 with graphs of 16 and of 32 (one chunk: no copy/compute overlap)
  device_only      fused FP16 channels_last on the GPU alone: eager and one CUDA graph (the ceiling)
  backend_eager    the backend with cuda_graphs=False
  unfused_eager    the plain model, FP32 and FP16, contiguous, eager (what `model(x)` gives)
  also             --also ARCH (default yolor_p6, the main-branch P6) through the backend, batch 32
  compile          --compile: the backend with torch.compile, batch 32 (minutes of compiling)

Writes $OUT/gpu-bench.json (rewritten after every stage: a killed run keeps what it measured) and
$OUT/gpu-bench.md, and prints the table last. A stage that would start with less than its need of
the --budget-s left is skipped and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yolor  # noqa: E402

DEVICE = torch.device("cuda")  # one GPU: the backend's default cuda:0
TARGET = {"arch": "yolor-p6", "size": 1280, "batch": 32, "images_per_s": 800.0}
OBJ_BIAS = -10.0
TOP_K = 300  # the export's default top-K head: what the served model (model.json) answers


from service.backends import torch_cuda  # noqa: E402 - the package needs no pydantic (tested)

TC: Any = torch_cuda


# --- measuring -----------------------------------------------------------------------------------


class Timing:
    def __init__(self, min_calls: int, min_seconds: float, max_seconds: float, warmup: int) -> None:
        self.min_calls, self.min_seconds, self.max_seconds, self.warmup = (
            min_calls,
            min_seconds,
            max_seconds,
            warmup,
        )

    def measure(self, batch: int, call: Callable[[int], object]) -> dict[str, float]:
        """`call(i)` runs call number i synchronously; images/s and latency over the measured calls."""
        for i in range(self.warmup):
            call(i)
        times: list[float] = []
        start = time.perf_counter()
        while True:
            t = time.perf_counter()
            call(len(times))
            times.append(time.perf_counter() - t)
            spent = time.perf_counter() - start
            if len(times) >= self.min_calls and spent >= self.min_seconds:
                break
            if spent >= self.max_seconds and len(times) >= 5:
                break
        ms = np.array(times) * 1e3
        return {
            "batch": batch,
            "calls": len(times),
            "images_per_s": batch * len(times) / float(np.sum(times)),
            "mean_ms": float(ms.mean()),
            "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)),
        }


@contextlib.contextmanager
def peak_memory(into: dict[str, Any]) -> Iterator[None]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        into["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        into["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30


class Report:
    """Results by stage, written after each; the stages run while the budget lasts."""

    def __init__(self, out: Path, budget_s: float, args: argparse.Namespace) -> None:
        self.out, self.budget_s, self.start = out, budget_s, time.monotonic()
        self.data: dict[str, Any] = {
            "what": "benchmarks/gpu_bench.py",
            "args": {k: str(v) for k, v in vars(args).items()},
            "target": TARGET,
            "stages": {},
        }
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def stage(self, name: str, need_s: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        if self.left() < need_s:
            self.data["stages"][name] = {
                "skipped": f"time budget: {self.left():.0f} s left, needs {need_s:.0f}"
            }
            print(f"[{name}] skipped: {self.data['stages'][name]['skipped']}", flush=True)
            self.write()
            return None
        print(f"[{name}] ... ({self.left():.0f} s of budget left)", flush=True)
        t = time.monotonic()
        try:
            result = fn()
        except Exception as e:
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            print(f"[{name}] failed: {result['error']}\n{result['traceback']}", flush=True)
        result["stage_s"] = round(time.monotonic() - t, 1)
        self.data["stages"][name] = result
        self.write()
        print(f"[{name}] done in {result['stage_s']} s", flush=True)
        return result

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "gpu-bench.json").write_text(json.dumps(self.data, indent=2) + "\n")
        (self.out / "gpu-bench.md").write_text(markdown(self.data))


# --- the stages ----------------------------------------------------------------------------------


def env() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    with contextlib.suppress(Exception):
        query = ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,power.limit", "--format=csv"]
        info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=15).stdout.strip()
    return info


def _bandwidth(copy: Callable[[], object], nbytes: int, reps: int = 5) -> float:
    copy()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        copy()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return nbytes / float(np.median(times)) / 1e9


def transfers(size: int, rows: int, columns: int, batch: int) -> dict[str, Any]:
    """GB/s of the copies one batch needs: input host -> pinned -> GPU, output GPU -> pinned -> new array."""
    image, out = (batch, 3, size, size), (batch, rows, columns)
    src = torch.from_numpy(np.random.default_rng(0).random(image, dtype=np.float32))
    pin_in = torch.empty(image, pin_memory=True)
    pin_out = torch.empty(out, pin_memory=True)
    dev_in = torch.empty(image, device=DEVICE)
    dev_out = torch.rand(out, device=DEVICE)
    in_bytes, out_bytes = src.numel() * 4, pin_out.numel() * 4
    result = {
        "batch": batch,
        "input_mb": in_bytes / 1e6,
        "output_mb": out_bytes / 1e6,
        "host_to_pinned_gbps": _bandwidth(lambda: pin_in.copy_(src), in_bytes),
        "h2d_pinned_gbps": _bandwidth(lambda: dev_in.copy_(pin_in, non_blocking=True), in_bytes),
        "d2h_pinned_gbps": _bandwidth(lambda: pin_out.copy_(dev_out, non_blocking=True), out_bytes),
        "pinned_to_new_array_gbps": _bandwidth(
            lambda: torch.from_numpy(np.empty(out, np.float32)).copy_(pin_out), out_bytes
        ),
        "h2d_pageable_gbps": _bandwidth(lambda: dev_in.copy_(src), in_bytes),
    }
    return result  # the buffers go back to torch's caches


def conv_gflop(model: torch.nn.Module, size: int) -> float:
    """Multiply-adds x 2 of every conv for one image (the rest of the net is elementwise)."""
    total = [0]

    def count(conv: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        assert isinstance(conv, torch.nn.Conv2d)
        kh, kw = conv.kernel_size
        total[0] += output.numel() * conv.in_channels // conv.groups * kh * kw * 2

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return total[0] / 1e9


def build(arch: str, size: int, workdir: Path) -> tuple[yolor.YOLOR, Path, dict[str, Any]]:
    torch.manual_seed(0)
    model = yolor.build_model(arch, nc=80)
    with torch.no_grad():
        head = model.net.head
        for conv in head.preds:
            assert conv.bias is not None
            conv.bias.view(head.na, head.no)[:, 4] = OBJ_BIAS
    model.input_size = size
    checkpoint = workdir / "checkpoint.pt"
    yolor.save_checkpoint(model, checkpoint, input_size=size)
    info = {
        "arch": arch,
        "branch": model.spec.branch,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "checkpoint": str(checkpoint),
        "checkpoint_mb": checkpoint.stat().st_size / 1e6,
        "output_rows": TC.output_rows(size, model.strides, model.spec.num_anchors),
        "output_columns": 5 + model.nc,
        "conv_gflop_per_image": conv_gflop(model.to(DEVICE), size),
    }
    model.cpu()
    return model, checkpoint, info


def write_model_dir(model: yolor.YOLOR, checkpoint: Path, size: int, max_batch: int) -> dict[str, Any]:
    """model.json beside the checkpoint for `yolor serve --backend torch`: the top-K head (the
    backend picks the candidates on the GPU), and the mandatory 'onnx' artifact as a placeholder
    file (the torch backend never reads it)."""
    directory = checkpoint.parent
    placeholder = directory / "model.onnx"
    placeholder.write_bytes(
        b"placeholder: benchmarks/gpu_bench.py serves this model with the torch backend\n"
    )

    def artifact(path: Path) -> dict[str, Any]:
        data = path.read_bytes()
        return {
            "file": path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "precision": "fp32",
        }

    rows = TC.output_rows(size, model.strides, model.spec.num_anchors)
    manifest = {
        "format": "yolor-serving/model/1",
        "arch": model.arch,
        "branch": model.spec.branch,
        "nc": model.nc,
        "class_names": list(model.class_names),
        "depth": model.scaling.depth,
        "width": model.scaling.width,
        "input_size": size,
        "strides": list(model.strides),
        "anchors": model.anchors.tolist(),
        "head": "topk",
        "top_k": min(TOP_K, rows),
        "output": {
            "name": "detections",
            "shape": ["batch", min(TOP_K, rows), 6],
            "columns": ["x1", "y1", "x2", "y2", "score", "class_id"],
        },
        "max_batch": max_batch,
        "artifacts": {"onnx": artifact(placeholder), "checkpoint": artifact(checkpoint)},
        "source": {"note": "random weights from benchmarks/gpu_bench.py", "obj_bias": OBJ_BIAS},
        "versions": {"torch": torch.__version__},
    }
    (directory / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"model_dir": str(directory)}


def _echo(rows: int, columns: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.float().reshape(len(x), -1)
        repeats = -(-rows * columns // flat.shape[1])
        return flat.repeat(1, repeats)[:, : rows * columns].view(-1, rows, columns)

    return forward


def _echo_expected(batch: np.ndarray, rows: int, columns: int) -> np.ndarray:
    flat = batch.astype(np.float16).astype(np.float32).reshape(len(batch), -1)
    return np.tile(flat, -(-rows * columns // flat.shape[1]))[:, : rows * columns].reshape(-1, rows, columns)


def pipeline_check(checkpoint: Path, size: int, max_batch: int, inputs: np.ndarray) -> dict[str, Any]:
    """The backend at full size with its net replaced by an echo: exact, image by image."""
    real = TC.inference_forward
    TC.inference_forward = lambda model, anchors: _echo(
        TC.output_rows(size, model.strides, anchors.shape[1]), 5 + model.nc
    )
    try:
        backend = TC.TorchCudaBackend(
            checkpoint, input_size=size, max_batch_size=max_batch, device=str(DEVICE)
        )
    finally:
        TC.inference_forward = real
    rows, columns = backend.output_shape
    checks: list[dict[str, Any]] = []
    try:
        for n, copy_output in ((min(29, max_batch), True), (max_batch, False), (1, True), (8, False)):
            n = min(n, max_batch)
            backend.copy_output = copy_output
            batch = inputs[-n:] if len(checks) % 2 else inputs[:n]  # other images at the same rows
            got = backend.infer(batch)
            bad = int((got != _echo_expected(batch, rows, columns)).any(axis=(1, 2)).sum())
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


def numerics(backend: Any, model: yolor.YOLOR, inputs: np.ndarray) -> dict[str, Any]:
    """Backend output against the unfused FP32 net on the GPU, TF32 off."""
    batch = inputs[:9]
    got = backend.infer(batch)
    reference = model.to(DEVICE).eval()
    try:
        with tf32_off(), torch.inference_mode():
            want = torch.cat(
                [reference(torch.from_numpy(b).to(DEVICE)).cpu() for b in np.array_split(batch, 3)]
            ).numpy()
    finally:
        model.cpu()
        torch.cuda.empty_cache()
    diff = np.abs(got.astype(np.float64) - want)
    tolerance = {"box_max_rel": 5e-3, "score_max_abs": 1e-2}  # FP16 net, float32 decode
    result: dict[str, Any] = {
        "batch": len(batch),
        "finite": bool(np.isfinite(got).all()),
        "rel_error": float(np.linalg.norm(diff) / np.linalg.norm(want)),
        "box_max_abs_px": float(diff[..., :4].max()),
        "box_max_rel": float((diff[..., :4] / np.maximum(np.abs(want[..., :4]), 1.0)).max()),
        "score_max_abs": float(diff[..., 4:].max()),
        "tolerance": tolerance,
    }
    result["passed"] = result["finite"] and all(result[k] <= v for k, v in tolerance.items())
    return result


def sizes(backend: Any) -> str:
    """The backend's graph sizes in words: "1..8", or the list."""
    got = list(backend.graph_sizes)
    return f"{got[0]}..{got[-1]}" if got == list(range(got[0], got[-1] + 1)) and len(got) > 1 else str(got)


def backend_rows(
    backend: Any, timing: Timing, inputs: tuple[np.ndarray, np.ndarray], batches: list[int], label: str
) -> list[dict[str, Any]]:
    rows = []
    for b in batches:
        pair = (inputs[0][:b], inputs[1][:b])
        row: dict[str, Any] = {"what": label, "copy_output": backend.copy_output}

        def call(i: int, pair: tuple[np.ndarray, np.ndarray] = pair) -> None:
            backend.infer(pair[i % 2])

        with peak_memory(row):
            row |= timing.measure(b, call)
        rows.append(row)
        print(f"  {label} b{b}: {row['images_per_s']:.0f} images/s, p50 {row['p50_ms']:.1f} ms", flush=True)
    return rows


def device_rows(
    forward: Callable[[torch.Tensor], object], x: torch.Tensor, timing: Timing, label: str, *, graph: bool
) -> dict[str, Any]:
    """`forward` on a device-resident batch, eager or as one CUDA graph; no host copies."""
    row: dict[str, Any] = {"what": label}
    with peak_memory(row), torch.inference_mode():
        step: Callable[[], object] = functools.partial(forward, x)
        if graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    forward(x)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                forward(x)
            step = g.replay

        def call(i: int) -> None:
            step()
            torch.cuda.synchronize()

        row |= timing.measure(len(x), call)
    print(f"  {label} b{len(x)}: {row['images_per_s']:.0f} images/s, p50 {row['p50_ms']:.1f} ms", flush=True)
    return row


# --- the report ----------------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> str:
    stages = data["stages"]
    e = stages.get("env", {})
    lines = [
        "# YOLOR on one GPU: the torch backend beside eager PyTorch",
        "",
        f"GPU {e.get('gpu', '?')} (sm {e.get('capability', '?')}, {e.get('sms', '?')} SMs), torch "
        f"{e.get('torch', '?')}, CUDA {e.get('cuda', '?')}, cuDNN {e.get('cudnn', '?')}; "
        f"args {data['args'].get('arch')} at {data['args'].get('size')} px, random weights. "
        f"Written by benchmarks/gpu_bench.py in {data.get('elapsed_s', '?')} s.",
        "",
    ]
    best = best_backend(data)
    t = data["target"]
    if best is not None:
        verdict = "met" if best["images_per_s"] >= t["images_per_s"] else "NOT met"
        lines += [
            f"Target {t['images_per_s']:.0f} images/s for {t['arch']} at {t['size']}, batch {t['batch']}: "
            f"best backend row {best['images_per_s']:.0f} images/s ({best['what']}, copy_output "
            f"{best['copy_output']}): **{verdict}**.",
            "",
        ]
    for name in ("pipeline_check", "numerics"):
        if name in stages and "passed" in stages[name]:
            lines.append(f"- {name}: {'passed' if stages[name]['passed'] else 'FAILED'}")
    if "transfers" in stages and "h2d_pinned_gbps" in stages["transfers"]:
        tr = stages["transfers"]
        lines.append(
            f"- transfers (GB/s): host->pinned {tr['host_to_pinned_gbps']:.1f}, H2D pinned "
            f"{tr['h2d_pinned_gbps']:.1f}, D2H pinned {tr['d2h_pinned_gbps']:.1f}, pinned->new array "
            f"{tr['pinned_to_new_array_gbps']:.1f}, H2D pageable {tr['h2d_pageable_gbps']:.1f}"
        )
    if "model" in stages and "conv_gflop_per_image" in stages["model"]:
        m = stages["model"]
        lines.append(
            f"- model: {m['params_m']:.1f} M params, {m['conv_gflop_per_image']:.0f} conv GFLOP/image"
        )
    lines += [
        "",
        "| stage | what | batch | images/s | p50 ms | p90 ms | p99 ms | calls | peak GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, stage in stages.items():
        for row in stage.get("rows", []):
            what = row["what"] + ("" if row.get("copy_output", True) else ", no output copy")
            lines.append(
                f"| {name} | {what} | {row['batch']} | {row['images_per_s']:.0f} | {row['p50_ms']:.1f} | "
                f"{row['p90_ms']:.1f} | {row['p99_ms']:.1f} | {row['calls']} | "
                f"{row.get('peak_allocated_gib', float('nan')):.1f} |"
            )
    for name, stage in stages.items():
        if "skipped" in stage or "error" in stage:
            lines.append(f"\n{name}: {stage.get('skipped') or stage.get('error')}")
    return "\n".join(lines) + "\n"


def best_backend(data: dict[str, Any]) -> dict[str, Any] | None:
    rows = [
        r
        for name in ("backend", "chunks", "compile")
        for r in data["stages"].get(name, {}).get("rows", [])
        if r["batch"] == data["target"]["batch"]
    ]
    return max(rows, key=lambda r: r["images_per_s"], default=None)


# --- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="yolor-p6", help="paper-branch P6 (yolor_p6 is the main-branch one)")
    p.add_argument("--also", default="yolor_p6", help="a second arch at batch 32 ('' for none)")
    p.add_argument("--size", type=int, default=1280)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--min-calls", type=int, default=50)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=8.0, help="stop a row after this (>= 5 calls)")
    p.add_argument("--budget-s", type=float, default=240.0, help="skip stages that would start later")
    p.add_argument("--compile", action="store_true", help="also torch.compile (minutes)")
    p.add_argument(
        "--workdir", type=Path, default=None, help="checkpoint (+ model.json) here (default: temp)"
    )
    p.add_argument("--model-dir", action="store_true", help="write model.json for `yolor serve` into workdir")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-out"))
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to measure", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.backends.cudnn.benchmark = True
    report = Report(args.out, args.budget_s, args)
    timing = Timing(args.min_calls, args.min_seconds, args.max_seconds, warmup=3)
    device_timing = Timing(max(10, args.min_calls // 5), args.min_seconds, args.max_seconds, warmup=2)
    batches = [int(b) for b in args.batches.split(",")]
    top = max(*batches, args.max_batch)
    s = report.data["stages"]

    report.stage("env", 0, env)
    temp = tempfile.TemporaryDirectory(prefix="yolor-gpu-")
    workdir = args.workdir or Path(temp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Any] = {}

    def model_stage() -> dict[str, Any]:
        built["model"], built["checkpoint"], info = build(args.arch, args.size, workdir)
        if args.model_dir:
            info |= write_model_dir(built["model"], built["checkpoint"], args.size, args.max_batch)
        return info

    if report.stage("model", 30, model_stage) is None or "error" in s["model"]:
        return 1
    model, checkpoint = built["model"], built["checkpoint"]
    rows, columns = s["model"]["output_rows"], s["model"]["output_columns"]
    report.stage("transfers", 20, lambda: transfers(args.size, rows, columns, args.max_batch))

    rng = np.random.default_rng(0)
    shape = (top, 3, args.size, args.size)
    inputs = (rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32))
    report.stage("pipeline_check", 30, lambda: pipeline_check(checkpoint, args.size, top, inputs[0]))

    main_backend: dict[str, Any] = {}

    def backend_stage() -> dict[str, Any]:
        backend = TC.TorchCudaBackend(
            checkpoint, input_size=args.size, max_batch_size=top, device=str(DEVICE)
        )
        main_backend["b"] = backend
        out = {"device": backend.device, "graph_sizes": list(backend.graph_sizes)}
        out["numerics"] = numerics(backend, model, inputs[0])
        out["rows"] = backend_rows(backend, timing, inputs, batches, f"backend, graphs {sizes(backend)}")
        backend.copy_output = False
        out["rows"] += backend_rows(
            backend, timing, inputs, [args.max_batch], f"backend, graphs {sizes(backend)}"
        )
        return out

    report.stage("backend", 60, backend_stage)
    if "b" in main_backend:
        s["numerics"] = s["backend"].pop("numerics", {"error": "not measured"})
        main_backend.pop("b").close()
        report.write()
    torch.cuda.empty_cache()

    def topk_stage() -> dict[str, Any]:
        """As served: the K best candidates picked on the GPU, ~7 KB per image to copy back, not the
        raw rows (~35 MB per image at 1280 px)."""
        backend = TC.TorchCudaBackend(
            checkpoint, input_size=args.size, max_batch_size=top, device=str(DEVICE), top_k=TOP_K
        )
        try:
            label = f"backend, top-{TOP_K} on the GPU, graphs {sizes(backend)}"
            return {"rows": backend_rows(backend, timing, inputs, batches, label)}
        finally:
            backend.close()

    report.stage("backend_topk", 45, topk_stage)
    torch.cuda.empty_cache()

    def chunks_stage() -> dict[str, Any]:
        out: dict[str, Any] = {"rows": []}
        for largest in (16, 32):
            if report.left() < 25 or largest > top:
                break
            backend = TC.TorchCudaBackend(
                checkpoint,
                input_size=args.size,
                max_batch_size=top,
                graph_sizes=(largest,),
                device=str(DEVICE),
            )
            try:
                for copy_output in (True, False):
                    backend.copy_output = copy_output
                    label = f"backend, graphs {sizes(backend)}"
                    out["rows"] += backend_rows(backend, timing, inputs, [args.max_batch], label)
            finally:
                backend.close()
        return out

    report.stage("chunks", 45, chunks_stage)

    def device_stage() -> dict[str, Any]:
        fused, anchors = TC.prepare_model(model, DEVICE)
        forward = TC.inference_forward(fused, anchors)
        out: dict[str, Any] = {"rows": [], "errors": []}
        for b in sorted({min(8, top), args.max_batch}):
            x = torch.from_numpy(inputs[0][:b]).to(DEVICE, torch.float16)
            x = x.contiguous(memory_format=torch.channels_last)
            for graph in (False, True):
                label = f"fused fp16 channels_last, {'CUDA graph' if graph else 'eager'}"
                try:
                    row = device_rows(forward, x, timing if graph else device_timing, label, graph=graph)
                    out["rows"].append(row)
                except Exception as e:  # keep the other rows
                    out["errors"].append(f"{label} b{b}: {type(e).__name__}: {e}")
                    print(f"  {out['errors'][-1]}", flush=True)
        return out

    report.stage("device_only", 30, device_stage)

    def eager_backend_stage() -> dict[str, Any]:
        backend = TC.TorchCudaBackend(
            checkpoint, input_size=args.size, max_batch_size=top, cuda_graphs=False, device=str(DEVICE)
        )
        try:
            return {
                "rows": backend_rows(
                    backend, timing, inputs, [1, args.max_batch], f"backend, eager {sizes(backend)}"
                )
            }
        finally:
            backend.close()

    report.stage("backend_eager", 30, eager_backend_stage)

    def unfused_stage() -> dict[str, Any]:
        out: dict[str, Any] = {"rows": []}
        for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16")):
            net = yolor.build_model(args.arch, nc=80).to(DEVICE, dtype).eval()
            for b in batches:
                if report.left() < 10:
                    break
                x = torch.from_numpy(inputs[0][:b]).to(DEVICE, dtype)
                out["rows"].append(
                    device_rows(
                        net,
                        x,
                        device_timing,
                        f"unfused {name} eager" + (" (TF32 convs, torch default)" if name == "fp32" else ""),
                        graph=False,
                    )
                )
            del net
            torch.cuda.empty_cache()
        return out

    report.stage("unfused_eager", 40, unfused_stage)

    if args.also:

        def also_stage() -> dict[str, Any]:
            other = Path(tempfile.mkdtemp(prefix="yolor-also-"))
            _, other_checkpoint, info = build(args.also, args.size, other)
            backend = TC.TorchCudaBackend(
                other_checkpoint, input_size=args.size, max_batch_size=top, device=str(DEVICE)
            )
            try:
                backend.copy_output = False
                info["rows"] = backend_rows(
                    backend, timing, inputs, [args.max_batch], f"{args.also} backend, graphs {sizes(backend)}"
                )
            finally:
                backend.close()
            return info

        report.stage("also", 45, also_stage)

    if args.compile:

        def compile_stage() -> dict[str, Any]:
            backend = TC.TorchCudaBackend(
                checkpoint,
                input_size=args.size,
                max_batch_size=top,
                graph_sizes=(min(8, top),),
                compile_model=True,
                device=str(DEVICE),
            )
            try:
                backend.copy_output = False
                return {
                    "rows": backend_rows(
                        backend,
                        timing,
                        inputs,
                        [args.max_batch],
                        f"backend, compiled, graphs {sizes(backend)}",
                    )
                }
            finally:
                backend.close()

        report.stage("compile", 150, compile_stage)

    report.write()
    print("\n" + markdown(report.data), flush=True)
    temp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
