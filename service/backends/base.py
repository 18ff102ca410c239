"""The backend interface: a model that maps an image batch to the manifest's output layout.

As in Polygraphy's runners, the public `infer` validates what goes in and comes out and a private
`_infer` does the work, so every backend is held to the same contract. Heavy imports (onnxruntime,
tensorrt, torch) live only in the module of the backend that needs them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from service.processing.heads import Head

FloatBatch = npt.NDArray[np.float32]


def device_index(device: str) -> int:
    """The GPU index of a device: "cuda:N" -> N; "cuda", "auto" and "cpu" -> 0."""
    _, _, index = device.partition(":")
    return int(index) if index else 0


class BackendError(RuntimeError):
    """A backend failed to load or to run a batch."""


class BackendUnavailable(BackendError):
    """This backend cannot run on this host (package missing, no GPU, no engine)."""


class BackendClosed(BackendError):
    """`infer` was called on a backend that was closed."""


@runtime_checkable
class Backend(Protocol):
    """What the server needs from a model runtime.

    `input_shape` is one image, `(3, S, S)`; `output_shape` is one image's output, e.g. `(K, 6)` for
    the top-K head or `(N, 5 + nc)` for the raw head (None for a dimension only known at run time).
    `head` names that layout. `device` says where it runs, in words (providers, GPU).
    `concurrency` is how many `infer` calls may run at once (the batcher keeps that many batches in
    flight): 1 unless the runtime is thread-safe and gains from it (ONNX Runtime on the CPU).
    `accelerator`: it computes off the host's CPU (a GPU), which the CPU's post-processing of one
    batch should not keep waiting for the next.
    """

    name: str
    precision: str
    device: str
    head: Head
    max_batch_size: int
    input_name: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int | None, ...]
    concurrency: int
    accelerator: bool

    @property
    def closed(self) -> bool: ...

    def infer(self, batch: FloatBatch) -> FloatBatch:
        """(B, 3, S, S) float32 RGB in [0, 1], 1 <= B <= max_batch_size -> (B, *output_shape) float32:
        an array of the caller's, or a view (numpy `base` set) of a buffer the next call reuses.

        Raises BackendClosed after `close()`.
        """
        ...

    def close(self, timeout_s: float | None = None) -> bool:
        """Release the runtime once no `infer` is running (waiting up to `timeout_s`; None: for ever).

        True when released (or already closed); False when an `infer` was still running at the
        timeout: then nothing was released, because freeing buffers under a running call corrupts it.
        """
        ...


class BaseBackend(ABC):
    """Implements the validated `infer` around a subclass's `_infer`, and `close` around `_release`.

    At most `concurrency` calls of `infer` run at once (default 1: most backends keep per-call
    buffers; more callers wait), and `close` waits for all of them: no runtime is released under a
    running call, whichever thread calls `close`.
    """

    def __init__(
        self,
        *,
        name: str,
        precision: str,
        device: str,
        head: Head,
        max_batch_size: int,
        input_name: str,
        input_shape: tuple[int, int, int],
        output_shape: tuple[int | None, ...],
        concurrency: int = 1,
        accelerator: bool = False,
    ) -> None:
        if max_batch_size < 1 or concurrency < 1:
            raise ValueError(
                f"max_batch_size and concurrency must be >= 1, got {max_batch_size}, {concurrency}"
            )
        self.name, self.precision, self.device, self.head = name, precision, device, head
        self.max_batch_size = max_batch_size
        self.input_name = input_name
        self.input_shape = input_shape
        self.output_shape = output_shape
        self.concurrency, self.accelerator = concurrency, accelerator
        self._calls = threading.Condition()  # guards _running and _closed; notified when either changes
        self._running = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def infer(self, batch: FloatBatch) -> FloatBatch:
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            raise TypeError(f"batch must be a float32 ndarray, got {getattr(batch, 'dtype', type(batch))}")
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(
                f"batch must have shape (B, {', '.join(map(str, self.input_shape))}), got {batch.shape}"
            )
        if not 1 <= batch.shape[0] <= self.max_batch_size:
            raise ValueError(f"batch size {batch.shape[0]} is outside [1, {self.max_batch_size}]")
        with self._calls:  # wait for a free slot (at most `concurrency` calls run at once)
            self._calls.wait_for(lambda: self._closed or self._running < self.concurrency)
            if self._closed:
                raise BackendClosed(f"the {self.name} backend is closed")
            self._running += 1
        try:
            out = self._infer(np.ascontiguousarray(batch))
        finally:
            with self._calls:
                self._running -= 1
                self._calls.notify_all()
        self._check_output(out, batch.shape[0])
        return out

    def _check_output(self, out: object, batch_size: int) -> None:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32:
            raise BackendError(
                f"{self.name} returned {type(out).__name__} {getattr(out, 'dtype', '')}, not float32"
            )
        expected = (batch_size, *self.output_shape)
        if out.ndim != len(expected) or any(
            e is not None and e != o for e, o in zip(expected, out.shape, strict=True)
        ):
            raise BackendError(f"{self.name} returned shape {out.shape}, expected {expected}")

    @abstractmethod
    def _infer(self, batch: FloatBatch) -> FloatBatch:
        """Run a validated, C-contiguous batch."""

    def close(self, timeout_s: float | None = None) -> bool:
        """See `Backend.close`. Idempotent."""
        with self._calls:
            timeout = None if timeout_s is None else max(0.0, timeout_s)
            if not self._calls.wait_for(lambda: self._running == 0, timeout):
                return False
            if not self._closed:
                self._closed = True  # under the lock: no call starts from here on
                self._release()
                self._calls.notify_all()  # callers waiting for a slot now raise BackendClosed
        return True

    def _release(self) -> None:  # noqa: B027 - most backends hold nothing that needs releasing
        """Free the runtime's resources; called once, with no `infer` running."""

    def __repr__(self) -> str:
        limit = f"max batch {self.max_batch_size}"
        return f"<{type(self).__name__} {self.name} {self.precision} on {self.device}, {limit}>"
