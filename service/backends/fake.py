"""A backend that is a plain function, for tests (like httpx's `MockTransport`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from service.backends.base import BaseBackend, FloatBatch
from service.processing.heads import Head

if TYPE_CHECKING:  # pydantic stays out of the backends package's import
    from service.manifest import ModelManifest

InferFn = Callable[[FloatBatch], FloatBatch]


class FakeBackend(BaseBackend):
    """`infer(batch)` is `fn(batch)`, validated like any backend. Records the batch sizes it saw."""

    def __init__(
        self,
        fn: InferFn,
        *,
        input_size: int,
        output_shape: tuple[int | None, ...],
        max_batch_size: int = 8,
        head: Head = "topk",
        input_name: str = "images",
        precision: str = "fp32",
        concurrency: int = 1,
        accelerator: bool = False,
    ) -> None:
        super().__init__(
            name="fake",
            precision=precision,
            device="accelerator (python function)" if accelerator else "cpu (python function)",
            head=head,
            max_batch_size=max_batch_size,
            input_name=input_name,
            input_shape=(3, input_size, input_size),
            output_shape=output_shape,
            concurrency=concurrency,
            accelerator=accelerator,
        )
        self._fn = fn
        self._lock = threading.Lock()
        self.batch_sizes: list[int] = []

    @classmethod
    def for_manifest(
        cls,
        manifest: ModelManifest,
        fn: InferFn,
        *,
        max_batch_size: int | None = None,
        accelerator: bool = False,
    ) -> FakeBackend:
        """A fake whose input and output shapes are the manifest's."""
        return cls(
            fn,
            input_size=manifest.input_size,
            output_shape=manifest.image_output_shape,
            max_batch_size=max_batch_size or manifest.max_batch,
            head=manifest.head,
            input_name=manifest.input.name,
            accelerator=accelerator,
        )

    def _infer(self, batch: FloatBatch) -> FloatBatch:
        with self._lock:
            self.batch_sizes.append(int(batch.shape[0]))
        return np.asarray(self._fn(batch))
