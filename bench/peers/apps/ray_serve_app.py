"""Ray Serve serving the model as its docs show: one deployment with `num_replicas` replicas (Ray actors,
one process each) behind Serve's HTTP proxy, and `@serve.batch` (`max_batch_size`, `batch_wait_timeout_s`)
on an async method of the replica. The replica's `__call__` gets the Starlette `Request`, reads the
multipart upload and decodes + letterboxes it (`Work.preprocess`) before awaiting the batched method,
which runs ONNX Runtime on the batch and answers `/detect`'s JSON per image.

Run by `yolor bench peers` in Ray's own venv (see bench/peers/work.py for the environment); it starts a
local Ray instance (GCS, raylet, workers), so start-up takes seconds and many processes.

Quirks: `max_ongoing_requests` defaults to 5 per replica, which caps a batch at 5 (Serve warns when
`max_batch_size` exceeds it), so it is raised as Serve's warning asks. Each replica reserves `num_cpus`
from Ray's detected CPUs and a replica that does not fit stays pending forever, so the reservation
shrinks to fit PEER_WORKERS replicas. Starlette's `request.form()` needs python-multipart. Decoding in
`__call__` and inference in the batched method both run on the replica's event loop and block it (the
documented pattern), so a batch only collects the requests decoded within `batch_wait_timeout_s`.
Usage stats and the dashboard are off (a default `ray.init()` has both on); Ray still starts a minimal
dashboard process without UI. The replicas, proxy and controller run in process groups of their own, so
a SIGTERM to our group reaches only the driver and Ray's daemons; the driver's handler (installed after
`ray.init`, whose core worker replaces it) calls `ray.shutdown()`, which ends them all (about 8 s when the
daemons were signalled too).
"""

import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray is imported and starts its processes

import ray
from ray import serve
from ray.serve.config import HTTPOptions
from ray.serve.schema import LoggingConfig
from starlette.requests import Request

from bench.peers.work import PeerConfig, Work
from service.core.preprocess import ImageInput

CONFIG = PeerConfig.from_env()


class Detector:
    def __init__(self, config: PeerConfig) -> None:
        self.work = Work(config)

    async def __call__(self, request: Request) -> dict[str, Any]:
        form = await request.form()
        upload: Any = form["image"]
        image = self.work.preprocess(await upload.read())
        return await self.detect(image)

    @serve.batch(max_batch_size=CONFIG.max_batch, batch_wait_timeout_s=CONFIG.max_delay_ms / 1000)
    async def detect(self, images: list[ImageInput]) -> list[dict[str, Any]]:
        outputs = self.work.infer(images)
        return [self.work.answer(o, i) for o, i in zip(outputs, images, strict=True)]


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    config = CONFIG
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's own Serve messages
    signal.signal(signal.SIGTERM, _stop)  # after ray.init, whose core worker installs a SIGTERM handler
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        num_cpus = min(float(config.threads), cpus / config.workers)
        logs = LoggingConfig(log_level="WARNING", enable_access_log=False)
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=config.port), logging_config=logs)
        deployment = serve.deployment(
            num_replicas=config.workers,
            max_ongoing_requests=2 * config.max_batch,  # one batch running, the next one forming
            ray_actor_options={"num_cpus": num_cpus},
        )(Detector)
        app = deployment.bind(config)
        serve.run(app, route_prefix="/detect", logging_config=logs, blocking=True)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        ray.shutdown()  # stops the local node's processes (GCS, raylet, replicas, proxy, controller)
    sys.exit(0)


if __name__ == "__main__":
    main()
