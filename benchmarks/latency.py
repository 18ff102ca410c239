"""Latency of an exported model: bare ONNX Runtime vs the full HTTP service, side by side in one run.

    python benchmarks/latency.py --model service/demo_model --requests 200 [--image photo.jpg]

Prints p50/p95/mean for: (1) the bare ORT session on one letterboxed image (batch 1), (2) the
service's whole request (multipart upload, decode, letterbox, batcher, ORT, NMS, JSON) over HTTP on
loopback, sequential requests, and the ratio (2)/(1). The server runs in a subprocess on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from service.manifest import load_manifest
from service.processing import letterbox, to_input_tensor


def sample_image(path: str | None) -> bytes:
    if path:
        return Path(path).read_bytes()
    from skimage import data

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "p50": statistics.median(ms),
        "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
        "mean": statistics.fmean(ms),
    }


def bare_onnxruntime(model_dir: Path, image: bytes, n: int, threads: int) -> dict[str, float]:
    import onnxruntime as ort

    manifest = load_manifest(model_dir)
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    x = to_input_tensor([letterbox(rgb, manifest.input_size)[0]])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    for _ in range(10):
        session.run(None, {"images": x})
    times = []
    for _ in range(n):
        start = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    return summary(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served(model_dir: Path, image: bytes, n: int, threads: int) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "YOLOR_LOG_LEVEL": "WARNING", "YOLOR_ONNX_INTRA_OP_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "cli", "serve", "--model", str(model_dir), "--port", str(port)]
    cmd += ["--backend", "onnxruntime"]
    server = subprocess.Popen(cmd, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("server never became ready")
                time.sleep(0.2)
            for _ in range(10):
                client.post("/detect", files={"images": ("img.jpg", image)}).raise_for_status()
            times = []
            for _ in range(n):
                start = time.perf_counter()
                client.post("/detect", files={"images": ("img.jpg", image)}).raise_for_status()
                times.append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(30)
    return summary(times)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--image", help="an image file (default: scikit-image's coffee, 600x400 JPEG)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads")
    args = parser.parse_args()
    image = sample_image(args.image)
    bare = bare_onnxruntime(args.model, image, args.requests, args.threads)
    http = served(args.model, image, args.requests, args.threads)
    manifest = load_manifest(args.model)
    print(
        f"model {manifest.arch} {manifest.input_size}px, {args.requests} sequential requests, "
        f"{args.threads} ORT threads, {os.cpu_count()} CPUs"
    )
    for name, stats in (("bare onnxruntime (batch 1)", bare), ("served over HTTP", http)):
        p50, p95, mean = stats["p50"], stats["p95"], stats["mean"]
        print(f"{name:28s} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  mean {mean:7.2f} ms")
    ratio, extra = http["p50"] / bare["p50"], http["p50"] - bare["p50"]
    print(f"{'served / bare (p50)':28s} {ratio:.2f}x  (+{extra:.2f} ms)")


if __name__ == "__main__":
    main()
