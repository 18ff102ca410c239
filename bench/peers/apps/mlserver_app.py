"""MLServer serving the model as its docs show: a custom runtime (`MLModel` subclass) whose `load`
builds the worker's `Work` and whose `predict` runs a whole batch, MLServer's adaptive batching
(`max_batch_size`, `max_batch_time` in model-settings.json) and its parallel inference workers
(`parallel_workers` in settings.json), started as `mlserver start <folder>` on a folder written to a
temporary directory at start-up (the CLI runs in this process, in the foreground).

The image travels as MLServer's V2 (Open Inference Protocol) REST request, `POST
/v2/models/yolor/infer`, a BYTES input `image` of shape [1] holding the base64 JPEG with the
`base64` content type (see mlserver_body.py). MLServer's REST server has no multipart route
through adaptive batching (custom handlers bypass it) and does not read the V2 binary-data
extension, so base64 in JSON is the documented way. The answer is a V2 response whose output
`answer` (BYTES, shape [1, 1], content type `str`) holds the JSON of `Work.answer(...)`.

Where the work happens: the adaptive batcher runs in the main process and merges the requests into
one; the merged request is sent to one worker process (round robin), whose `predict` decodes the
base64 (MLServer's codec), decodes and letterboxes each JPEG, runs the batch and answers.

Quirks: gRPC cannot be switched off (it gets a free port); the metrics server is off
(`metrics_endpoint` null), but the workers still write Prometheus files to `metrics_dir`, and the
pool creates `environments_dir`, both by default under the cwd, so both point into the temp dir.
MLServer sets the multiprocessing start method to `spawn`: the workers import this file again as
`__mp_main__`, hence the runtime's import path `bench.peers.apps.mlserver_app.YolorRuntime`.
MLServer 1.7.1's workers die at start with uvloop >= 0.22 ("There is no current event loop",
SeldonIO/MLServer#2286): the venv pins `uvloop<0.22`. The batcher does not wait for a free worker:
it sends each batch when `max_batch_time` runs out, so batches queue at the workers and stay small.
`/v2/models/yolor/ready` answers 400 while the workers load the model and 200 once all have.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlserver import MLModel
from mlserver.codecs import Base64Codec
from mlserver.types import InferenceRequest, InferenceResponse, Parameters, ResponseOutput

from bench.peers.work import PeerConfig, Work

MODEL_NAME = "yolor"
QUIET_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {name: {"level": "WARNING"} for name in ("mlserver", "uvicorn", "uvicorn.access")},
}


class YolorRuntime(MLModel):
    """One parallel worker's model: `predict` gets the adaptive batcher's merged request."""

    async def load(self) -> bool:
        self.work = Work(PeerConfig.from_env())
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        jpegs: list[bytes] = self.decode(payload.inputs[0], default_codec=Base64Codec)
        inputs = [self.work.preprocess(j) for j in jpegs]
        outputs = self.work.infer(inputs)
        answers = [json.dumps(self.work.answer(o, i)) for o, i in zip(outputs, inputs, strict=True)]
        answer = ResponseOutput(
            name="answer",
            datatype="BYTES",
            shape=[len(answers), 1],
            data=answers,
            parameters=Parameters(content_type="str"),
        )
        return InferenceResponse(model_name=self.name, outputs=[answer])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_folder(folder: Path, config: PeerConfig) -> None:
    """settings.json (server) and yolor/model-settings.json (model), as `mlserver start` reads them."""
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": config.port,
        "grpc_port": _free_port(),
        "metrics_endpoint": None,
        "metrics_dir": str(folder / "metrics"),
        "environments_dir": str(folder / "envs"),
        "parallel_workers": config.workers,
        "logging_settings": QUIET_LOGGING,
    }
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "bench.peers.apps.mlserver_app.YolorRuntime",
        "max_batch_size": config.max_batch,
        "max_batch_time": config.max_delay_ms / 1000,
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1], "parameters": {"content_type": "base64"}}
        ],
        "outputs": [{"name": "answer", "datatype": "BYTES", "shape": [-1, 1]}],
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / MODEL_NAME).mkdir()
    (folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(model_settings))


def main() -> None:
    from mlserver.cli.main import main as mlserver_main

    config = PeerConfig.from_env()
    with tempfile.TemporaryDirectory(prefix="mlserver-peer-") as tmp:
        write_folder(Path(tmp), config)
        sys.argv = ["mlserver", "start", tmp]
        try:
            mlserver_main()
        except SystemExit as exit_:
            if exit_.code:
                raise


if __name__ == "__main__":
    main()
