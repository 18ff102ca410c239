"""`yolor serve` with an accelerator stand-in for its backend: the real server (`create_app`: HTTP,
decode pool, batcher, post-processing) on a model's manifest, each batch a sleep of `batch_ms` (the
GIL released, as a GPU call releases it) answering no detections. Its ceiling is max batch /
batch time images/s; what keeps a server below it is CPU work that does not overlap the "device".

    python -m bench.standin --model DIR --batch-ms 40 [--no-ready-batch]

serves on YOLOR_HOST:YOLOR_PORT (`bench.server.spawned_server(command=standin_command(...))`).
As an accelerator it gets the server's lookahead of one batch (the ready batch); `--no-ready-batch`
serves it as a CPU backend is served. `GET /bench/gaps` lists how long the backend waited between two
full batches (seconds, the first quarter left out as warm-up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def serve(model_dir: Path, batch_ms: float, ready_batch: bool) -> None:
    import gc

    import uvicorn

    from service.backends.fake import FakeBackend
    from service.http.app import GC_THRESHOLDS, create_app
    from service.settings import Settings

    gaps: list[float] = []
    last_end = [0.0]
    out_shape: list[int] = []
    full: list[int] = []  # the backend's max batch
    settings = Settings(model_dir=model_dir, device="cpu")

    def factory(settings: Settings, manifest: Any) -> FakeBackend:
        backend = FakeBackend.for_manifest(
            manifest, infer, max_batch_size=settings.max_batch_size, accelerator=ready_batch
        )
        out_shape.extend(int(d or 1) for d in backend.output_shape)
        full.append(backend.max_batch_size)
        return backend

    def infer(batch: np.ndarray) -> np.ndarray:
        start = time.monotonic()
        if last_end[0] and len(batch) == full[0]:
            gaps.append(start - last_end[0])
        time.sleep(batch_ms / 1000)
        last_end[0] = time.monotonic()
        return np.zeros((len(batch), *out_shape), np.float32)

    gc.set_threshold(*GC_THRESHOLDS)
    app = create_app(settings, backend_factory=factory)

    @app.get("/bench/gaps")
    def read_gaps() -> list[float]:
        return gaps[len(gaps) // 4 :]

    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)


def standin_command(model_dir: Path, batch_ms: float, ready_batch: bool = True) -> list[str]:
    """The command line of a stand-in server (run from the repository root)."""
    command = [sys.executable, "-m", "bench.standin", "--model", str(model_dir), "--batch-ms", str(batch_ms)]
    return command if ready_batch else [*command, "--no-ready-batch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch-ms", type=float, default=40.0)
    parser.add_argument("--no-ready-batch", action="store_true")
    args = parser.parse_args()
    serve(args.model, args.batch_ms, not args.no_ready_batch)


if __name__ == "__main__":
    main()
