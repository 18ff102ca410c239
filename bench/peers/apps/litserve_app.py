"""LitServe serving the model as its docs show: a `LitAPI` with its own batching (`max_batch_size`,
`batch_timeout`) and `workers_per_device` worker processes on the CPU; `decode_request` decodes and
letterboxes in the worker, `predict` runs the batch, `encode_response` answers `/detect`'s JSON.

Run by `yolor bench peers` in LitServe's own venv (see bench/peers/work.py for the environment).
No `from __future__ import annotations` here: LitServe compares `decode_request`'s annotation with
Starlette's `Request` class to decide whether to parse the body.
"""

from typing import Any

import litserve as ls
from fastapi import Request

from bench.peers.work import PeerConfig, Work


class YolorAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.work = Work(PeerConfig.from_env())

    def decode_request(self, request: Request) -> Any:  # LitServe hands over the parsed form
        form: Any = request
        return self.work.preprocess(form["image"].file.read())

    def predict(self, x: list[Any]) -> list[dict[str, Any]]:
        outputs = self.work.infer(x)
        return [self.work.answer(o, i) for o, i in zip(outputs, x, strict=True)]

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    config = PeerConfig.from_env()
    api = YolorAPI(
        max_batch_size=config.max_batch, batch_timeout=config.max_delay_ms / 1000, api_path="/detect"
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=config.workers, timeout=60)
    server.run(host="127.0.0.1", port=config.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
