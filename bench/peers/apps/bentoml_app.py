"""BentoML (1.4, new-style `@bentoml.service` API) serving the model as its docs show for images
with adaptive batching: a batchable API answers one request with a batch, and only takes one
batchable argument (a list or an array), so an uploaded file goes to a plain API of a front
Service which calls the batchable API of a model Service through `bentoml.depends` (the docs'
"Handle multiple parameters" / multi-Service batching pattern).

- `Detector` (front, `workers=PEER_WORKERS`): `POST /detect`, multipart field `image` (a
  `Path`: BentoML spools the upload to a temp file). Per-request work happens here: decode +
  letterbox before the call, NMS + JSON after it. A sync API runs in a pool of `threads`
  threads (default 1, which would send one request at a time and never form a batch), so
  `threads` is set to let `2 * PEER_MAX_BATCH` requests per worker wait on the model at once.
- `Model` (`workers=PEER_WORKERS`, each its own `Work` / ONNX session): `infer`, batchable on
  axis 0 of the letterboxed tensors (sent pickled over a Unix socket by BentoML's own client).

Quirks: BentoML's adaptive batching has no maximum-wait setting (PEER_MAX_DELAY_MS is unused):
its CORK dispatcher runs one batch at a time per worker, dispatches as soon as a worker is free
and learns from recent batch times how long to hold a batch. `max_latency_ms` is a latency
budget, not a wait: a queued request whose predicted latency passes it is shed with 503
"process is overloaded", so it is left at 60 s (BentoML's default), as is the 60 s request
timeout. The first ~10 requests per worker go through one at a time while the dispatcher trains.
Usage tracking is off (BENTOML_DO_NOT_TRACK), access logs are off, BentoML logs warnings only.
Readiness: GET /readyz (200 once a front worker is up and the model Service answers ready).
"""

import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

os.environ["BENTOML_DO_NOT_TRACK"] = "true"  # before bentoml is imported, in every process

import bentoml
import numpy as np

from bench.peers.work import PeerConfig, Work
from service.core.preprocess import ImageInput

CONFIG = PeerConfig.from_env()
LOGGING: Any = {"access": {"enabled": False}}
logging.getLogger("bentoml").setLevel(logging.WARNING)  # imported after BentoML sets up logging


def _die_with_arbiter() -> None:
    """Circus starts every worker in a session of its own, out of the launcher's process group:
    have the kernel kill the worker if the arbiter dies first (SIGKILLed after the grace period)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Tensor:
    """What `Work.infer` reads of an image: its letterboxed input tensor."""

    def __init__(self, tensor: np.ndarray) -> None:
        self.tensor = tensor


# BentoML 1.4.40's front-to-model client (RemoteProxy) replaces its aiohttp session every
# `runner_connection.max_requests` requests (default 100) by closing the old one, which cuts the
# requests still in flight on it: 500 "Server disconnected" under concurrent load. Not refreshed here.
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 1e9}


@bentoml.service(workers=CONFIG.workers, logging=LOGGING, runner_connection=RUNNER_CONNECTION)
class Model:
    def __init__(self) -> None:
        _die_with_arbiter()
        self.work = Work(CONFIG)

    # BentoML rejects max_batch_size < 2: PEER_MAX_BATCH=1 means a plain (unbatched) API
    @bentoml.api(
        batchable=CONFIG.max_batch > 1,
        batch_dim=0,
        max_batch_size=max(2, CONFIG.max_batch),
        max_latency_ms=60_000,
    )
    def infer(self, tensors: np.ndarray) -> np.ndarray:
        return self.work.infer(cast("list[ImageInput]", [_Tensor(t) for t in tensors]))


@bentoml.service(workers=CONFIG.workers, threads=2 * CONFIG.max_batch, logging=LOGGING)
class Detector:
    model = bentoml.depends(Model)

    def __init__(self) -> None:
        _die_with_arbiter()
        # decode, letterbox and answer only: no ONNX session here (Work skips it in stand-in mode)
        self.work = Work(replace(CONFIG, standin_ms=CONFIG.standin_ms or 1.0))

    @bentoml.api(route="/detect")
    def detect(self, image: Path) -> dict[str, Any]:
        pre = self.work.preprocess(image.read_bytes())
        output = self.model.infer(pre.tensor[None])
        return self.work.answer(output[0], pre)


def main() -> None:
    bentoml.serve(
        "bench.peers.apps.bentoml_app:Detector",
        working_dir=str(Path(__file__).resolve().parents[3]),
        host="127.0.0.1",
        port=CONFIG.port,
        blocking=True,
    )


if __name__ == "__main__":
    main()
