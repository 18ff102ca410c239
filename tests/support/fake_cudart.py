"""A CUDA runtime for tests: cuda-python's `cuda.bindings.runtime` calls the TensorRT code makes, with
host memory (ctypes buffers) standing in for GPU memory.

Same calling convention as the real bindings (every call returns `(error, *values)`; errors are
`cudaError_t` members with the real names and numbers; streams are objects that `int()` turns into a
handle), which tests/service/backends/test_tensorrt_real_bindings.py checks against the real
cuda-bindings. On top, it checks what a real GPU would not forgive silently and records it:
- `calls`: (function, current device of the calling thread or None) per call;
- a device-affine call from a thread that never called `cudaSetDevice` is recorded with None;
- copies must stay inside live allocations of the right kind (host <-> device);
- `live()` lists what is still allocated, so a test can see leaks;
- `fail_on[name] = k` makes the k-th call (1-based) of `name` fail with cudaErrorMemoryAllocation.
"""

from __future__ import annotations

import ctypes
import enum
import threading
from dataclasses import dataclass, field
from typing import Any


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:
    def __init__(self, handle: int) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


@dataclass
class cudaDeviceProp:
    name: bytes
    major: int
    minor: int


@dataclass
class Gpu:
    name: str = "NVIDIA H200"
    capability: tuple[int, int] = (9, 0)


@dataclass
class _Block:
    buffer: Any
    kind: str  # "host" or "device"
    device: int | None


@dataclass
class FakeCudart:
    """The module stand-in: `FakeCudart(gpus=[Gpu(...), ...])`; no GPUs = no driver."""

    gpus: list[Gpu] = field(default_factory=lambda: [Gpu()])
    fail_on: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, int | None]] = field(default_factory=list)

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __post_init__(self) -> None:
        self._blocks: dict[int, _Block] = {}
        self._streams: set[int] = set()
        self._count: dict[str, int] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    # bookkeeping -------------------------------------------------------------------------------
    def current_device(self) -> int | None:
        return getattr(self._local, "device", None)

    def _enter(self, name: str) -> cudaError_t | None:
        with self._lock:
            self.calls.append((name, self.current_device()))
            self._count[name] = self._count.get(name, 0) + 1
            if self.fail_on.get(name) == self._count[name]:
                return cudaError_t.cudaErrorMemoryAllocation
        if not self.gpus:
            return cudaError_t.cudaErrorInsufficientDriver
        return None

    def live(self) -> dict[str, int]:
        """What is still allocated: {"host": n, "device": n, "streams": n}."""
        kinds = [b.kind for b in self._blocks.values()]
        return {"host": kinds.count("host"), "device": kinds.count("device"), "streams": len(self._streams)}

    def _alloc(self, name: str, nbytes: int, kind: str) -> tuple[cudaError_t, int]:
        if (err := self._enter(name)) is not None:
            return err, 0
        if nbytes <= 0:
            return cudaError_t.cudaErrorInvalidValue, 0
        buffer = ctypes.create_string_buffer(nbytes)
        pointer = ctypes.addressof(buffer)
        self._blocks[pointer] = _Block(buffer, kind, self.current_device())
        return cudaError_t.cudaSuccess, pointer

    def _free(self, name: str, pointer: int, kind: str) -> tuple[cudaError_t]:
        if (err := self._enter(name)) is not None:
            return (err,)
        block = self._blocks.get(int(pointer))
        if block is None or block.kind != kind:
            return (cudaError_t.cudaErrorInvalidValue,)
        del self._blocks[int(pointer)]
        return (cudaError_t.cudaSuccess,)

    def _region(self, pointer: int, nbytes: int, kind: str) -> bool:
        for start, block in self._blocks.items():
            if block.kind == kind and start <= pointer and pointer + nbytes <= start + len(block.buffer):
                return True
        return False

    # the runtime API ---------------------------------------------------------------------------
    def cudaGetErrorString(self, err: cudaError_t) -> tuple[cudaError_t, bytes]:
        return cudaError_t.cudaSuccess, f"fake error {cudaError_t(err).name}".encode()

    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int]:
        if (err := self._enter("cudaGetDeviceCount")) is not None:
            return err, 0
        return cudaError_t.cudaSuccess, len(self.gpus)

    def cudaSetDevice(self, device: int) -> tuple[cudaError_t]:
        if (err := self._enter("cudaSetDevice")) is not None:
            return (err,)
        if not 0 <= device < len(self.gpus):
            return (cudaError_t.cudaErrorInvalidDevice,)
        self._local.device = device
        return (cudaError_t.cudaSuccess,)

    def cudaGetDevice(self) -> tuple[cudaError_t, int]:
        if (err := self._enter("cudaGetDevice")) is not None:
            return err, 0
        return cudaError_t.cudaSuccess, getattr(self._local, "device", 0)  # CUDA's default: device 0

    def cudaGetDeviceProperties(self, device: int) -> tuple[cudaError_t, cudaDeviceProp | None]:
        if (err := self._enter("cudaGetDeviceProperties")) is not None:
            return err, None
        if not 0 <= device < len(self.gpus):
            return cudaError_t.cudaErrorInvalidDevice, None
        gpu = self.gpus[device]
        name = gpu.name.encode().ljust(256, b"\0")  # a fixed char[256], as the struct holds it
        return cudaError_t.cudaSuccess, cudaDeviceProp(name, *gpu.capability)

    def cudaMallocHost(self, nbytes: int) -> tuple[cudaError_t, int]:
        return self._alloc("cudaMallocHost", nbytes, "host")

    def cudaMalloc(self, nbytes: int) -> tuple[cudaError_t, int]:
        return self._alloc("cudaMalloc", nbytes, "device")

    def cudaFreeHost(self, pointer: int) -> tuple[cudaError_t]:
        return self._free("cudaFreeHost", pointer, "host")

    def cudaFree(self, pointer: int) -> tuple[cudaError_t]:
        return self._free("cudaFree", pointer, "device")

    def cudaStreamCreate(self) -> tuple[cudaError_t, cudaStream_t | None]:
        if (err := self._enter("cudaStreamCreate")) is not None:
            return err, None
        handle = 0x5000 + len(self.calls)
        self._streams.add(handle)
        return cudaError_t.cudaSuccess, cudaStream_t(handle)

    def cudaStreamDestroy(self, stream: cudaStream_t) -> tuple[cudaError_t]:
        if (err := self._enter("cudaStreamDestroy")) is not None:
            return (err,)
        if int(stream) not in self._streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        self._streams.remove(int(stream))
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: cudaStream_t) -> tuple[cudaError_t]:
        if (err := self._enter("cudaStreamSynchronize")) is not None:
            return (err,)
        ok = int(stream) in self._streams
        return (cudaError_t.cudaSuccess if ok else cudaError_t.cudaErrorInvalidValue,)

    def cudaMemcpyAsync(
        self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind, stream: cudaStream_t
    ) -> tuple[cudaError_t]:
        """Copies at once (the fake has no asynchrony); checks both sides lie in live memory."""
        if (err := self._enter("cudaMemcpyAsync")) is not None:
            return (err,)
        sides = {
            cudaMemcpyKind.cudaMemcpyHostToDevice: ("device", "host"),
            cudaMemcpyKind.cudaMemcpyDeviceToHost: ("host", "device"),
            cudaMemcpyKind.cudaMemcpyDeviceToDevice: ("device", "device"),
            cudaMemcpyKind.cudaMemcpyHostToHost: ("host", "host"),
        }[cudaMemcpyKind(kind)]
        dst, src = int(dst), int(src)
        if int(stream) not in self._streams or not (
            self._region(dst, nbytes, sides[0]) and self._region(src, nbytes, sides[1])
        ):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, nbytes)
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind) -> tuple[cudaError_t]:
        """Synchronous; the host side may be any (pageable) memory, the device side must be live."""
        if (err := self._enter("cudaMemcpy")) is not None:
            return (err,)
        device_side = {cudaMemcpyKind.cudaMemcpyHostToDevice: dst, cudaMemcpyKind.cudaMemcpyDeviceToHost: src}
        pointer = device_side.get(cudaMemcpyKind(kind))
        if pointer is None or not self._region(int(pointer), nbytes, "device"):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), nbytes)
        return (cudaError_t.cudaSuccess,)

    def read(self, pointer: int, nbytes: int) -> bytes:
        """Test access to (fake) device memory."""
        assert self._region(int(pointer), nbytes, "device")
        return ctypes.string_at(int(pointer), nbytes)

    def write(self, pointer: int, data: bytes) -> None:
        assert self._region(int(pointer), len(data), "device")
        ctypes.memmove(int(pointer), data, len(data))
