"""Measurements on one CUDA GPU for `yolor bench gpu`: the device and its versions, copy bandwidth,
conv FLOPs, peak memory, and a forward timed on the device alone (eager or as one CUDA graph).

Imports torch (`yolor bench gpu` imports this module only once torch sees a GPU).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bench.host import host_info
from bench.timing import TimedCalls

log = logging.getLogger("yolor")

Timer = Callable[[Callable[[], object]], TimedCalls]  # bench.timing.time_calls with its pace set
Row = dict[str, Any]


def gpu_info(device: torch.device) -> dict[str, Any]:
    """The GPU, its driver's clocks and power limit (nvidia-smi, when there), the versions, the host."""
    props = torch.cuda.get_device_properties(device)
    info: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device),
        "capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_threads": torch.get_num_threads(),
        "host": host_info(),
    }
    query = ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,power.limit", "--format=csv"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=15).stdout.strip()
    return info


@contextlib.contextmanager
def peak_memory(into: Row) -> Iterator[None]:
    """The GPU memory peak inside, allocated and reserved by torch, put into `into` in GiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        into["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        into["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30


def _bandwidth(copy: Callable[[], object], nbytes: int, reps: int = 5) -> float:
    """GB/s of `copy()` (the median of `reps`, after one unmeasured)."""
    copy()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        copy()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return nbytes / float(np.median(times)) / 1e9


def transfers(device: torch.device, size: int, rows: int, columns: int, batch: int) -> dict[str, Any]:
    """GB/s of the copies one batch needs: input host -> pinned -> GPU, output GPU -> pinned -> new array."""
    image, out = (batch, 3, size, size), (batch, rows, columns)
    src = torch.from_numpy(np.random.default_rng(0).random(image, dtype=np.float32))
    pin_in = torch.empty(image, pin_memory=True)
    pin_out = torch.empty(out, pin_memory=True)
    dev_in = torch.empty(image, device=device)
    dev_out = torch.rand(out, device=device)
    in_bytes, out_bytes = src.numel() * 4, pin_out.numel() * 4
    return {  # the buffers go back to torch's caches
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


def device_row(
    forward: Callable[[torch.Tensor], object], x: torch.Tensor, timer: Timer, label: str, *, graph: bool
) -> Row:
    """`forward` on a device-resident batch, eager or as one CUDA graph; no host copies."""
    row: Row = {"what": label}
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

        def call() -> None:
            step()
            torch.cuda.synchronize()

        row |= timer(call).result(len(x)).to_dict()
    _progress(row)
    return row


def backend_rows(backend: Any, timer: Timer, inputs: tuple[np.ndarray, np.ndarray], batches: list[int],
                 label: str) -> list[Row]:  # fmt: skip
    """`backend.infer` per batch size, alternating between the first images of the two inputs (the
    backend returns only once its output is on the host: each call is synchronous)."""
    rows = []
    for b in batches:
        row: Row = {"what": label, "copy_output": backend.copy_output}
        with peak_memory(row):
            row |= timer(_alternating(backend, inputs[0][:b], inputs[1][:b])).result(b).to_dict()
        rows.append(row)
        _progress(row)
    return rows


def _alternating(backend: Any, first: np.ndarray, second: np.ndarray) -> Callable[[], object]:
    batches = itertools.cycle((first, second))
    return lambda: backend.infer(next(batches))


def _progress(row: Row) -> None:
    log.info("  %s b%d: %.0f images/s, p50 %.1f ms", row["what"], row["batch_size"], row["images_per_s"],
             row["latency"]["p50_ms"])  # fmt: skip
