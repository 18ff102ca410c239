"""What this machine allows in a regime, measured with the cheapest thread layout rather than ours, so
that every server is compared against the machine and not against our configuration.

- Inference CPU per image: the bare backend at the max batch, for each layout of the cores into
  concurrent runs x intra-op threads (2 x 1 and 1 x 2 on two cores); the cheapest counts.
- Decode + letterbox CPU per image of the regime's photos (full-size decode: the work every server
  does), and with reduced JPEG decoding (what ours can do instead).
- CPU regimes: cores / (inference + decode) images/s. The accelerator stand-in: its ceiling (max
  batch per batch time), or the cores / decode CPU if lower. One client: the bare batch-1 latency
  of the fastest layout is the floor of any server's latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.bare import bench_batch, load_backend
from bench.limits import preprocess_cpu_ms
from bench.peers.regimes import Regime
from service.host import host_cpu_count
from service.manifest import load_manifest
from service.settings import Settings


def layouts(cores: int) -> list[tuple[int, int]]:
    """(concurrent runs, intra-op threads each) filling `cores`: (2, 1) and (1, 2) on two."""
    return [(runs, cores // runs) for runs in range(1, cores + 1) if cores % runs == 0]


def regime_limit(
    regime: Regime, model_dir: Path, jpegs: Sequence[bytes], seconds: float = 2.0
) -> dict[str, Any]:
    cores = host_cpu_count()
    manifest = load_manifest(model_dir)
    max_pixels = Settings().max_image_pixels
    decode = preprocess_cpu_ms(jpegs, manifest, max_pixels=max_pixels)
    reduced = preprocess_cpu_ms(jpegs, manifest, max_pixels=max_pixels, reduced_decode=True)
    limit: dict[str, Any] = {"cores": cores, "decode_cpu_ms": decode, "reduced_decode_cpu_ms": reduced}
    if regime.standin_ms:
        ceiling = manifest.max_batch * 1000 / regime.standin_ms
        limit["images_per_s"] = min(ceiling, cores * 1000 / decode)
        limit["images_per_s_reduced_decode"] = min(ceiling, cores * 1000 / reduced)
        limit["ceiling"] = ceiling
        return limit
    per_layout = {}
    for runs, threads in layouts(cores):
        settings = Settings(
            model_dir=model_dir, device="cpu", onnx_parallel_runs=runs, onnx_intra_op_threads=threads
        )
        _, backend, max_batch = load_backend(settings)
        try:
            full = bench_batch(backend, max_batch, min_seconds=seconds)
            one = bench_batch(backend, 1, min_seconds=seconds / 2)
        finally:
            backend.close()
        per_layout[f"{runs}x{threads}"] = {
            "cpu_ms_per_image": full.cpu_ms_per_image,
            "batch1_p50_ms": one.latency.p50_ms,
        }
    inference = min(v["cpu_ms_per_image"] for v in per_layout.values())
    limit |= {
        "layouts": per_layout,
        "inference_cpu_ms": inference,
        "images_per_s": cores * 1000 / (inference + decode),
        "images_per_s_reduced_decode": cores * 1000 / (inference + reduced),
        "batch1_p50_ms": min(v["batch1_p50_ms"] for v in per_layout.values()),
    }
    return limit
