"""One v2 infer call against the model the request holds, not whatever the server serves by then."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

from service.core.errors import InvalidTensor
from service.kserve import inference
from service.kserve.statistics import StatisticsBook
from service.kserve.tensors import InferRequest, Tensor
from service.settings import Settings
from tests.support.model_files import INPUT_SIZE, write_model_dir

pytestmark = pytest.mark.unit


class Held:
    """A loaded model as a request holds it: its manifest, its batcher's limit, a detector."""

    def __init__(self, manifest, max_batch: int) -> None:
        self.manifest, self.batcher = manifest, SimpleNamespace(max_batch_size=max_batch)
        self.version = 1
        self.detector = SimpleNamespace(infer_tensors=self.infer_tensors)
        self.taken = 0

    @contextlib.contextmanager
    def use(self):
        self.taken += 1
        yield self.detector

    async def infer_tensors(self, images, *, started, disconnected):
        run = {"batch_id": 1, "batch_size": len(images), "queue_s": 0.0, "inference_s": 0.01}
        return [SimpleNamespace(output=np.zeros((4, 6), np.float32), **run) for _ in images]


class State:
    """The server's state at the moment a reload has already made another model current."""

    def __init__(self, tmp_path, held: Held) -> None:
        self.settings = Settings(model_dir=tmp_path)
        self.held = held
        self.batcher = SimpleNamespace(max_batch_size=2)  # the newly served model's, not the held one's
        self.readiness = SimpleNamespace(check=lambda: None)
        self.models = SimpleNamespace(find=self.find)

    async def take(self, name, version):
        return self.find(name, version)

    def find(self, name, version):
        return self.held if name == "yolor" and version in (None, 1) else None


def request(batch: int) -> InferRequest:
    images = np.zeros((batch, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    return InferRequest("r", {}, [Tensor("images", "FP32", images)], [])


def test_the_batch_limit_is_the_held_models_and_the_model_is_taken_once(tmp_path):
    held = Held(write_model_dir(tmp_path), max_batch=4)
    state = State(tmp_path, held)
    book = StatisticsBook()
    at = inference.target(state, "yolor", None)
    ran = asyncio.run(inference.infer(state, book, at, request(3), started=0.0))
    assert [out.shape for out in ran.outputs] == [(3, 4, 6)] and held.taken == 1 and ran.version == 1
    assert book.of("yolor", 1).inference_count == 3
    with pytest.raises(InvalidTensor, match=r"outside \[1, 4\]"):
        asyncio.run(inference.infer(state, book, at, request(5), started=0.0))
