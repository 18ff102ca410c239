"""The few CUDA runtime calls the TensorRT backend and engine builder make, through cuda-python.

cuda-python's `cuda.bindings.runtime` returns `(error, *values)` from every call and never raises;
`Cuda` turns a failed call into BackendUnavailable (no driver, no such device: the host cannot run
this backend, so `auto` goes on to ONNX Runtime) or BackendError (anything else). The module imports
without cuda-python; `import_cudart` raises BackendUnavailable when it is missing.

Devices are numbered as CUDA numbers them in this process (after CUDA_VISIBLE_DEVICES and
CUDA_DEVICE_ORDER), which is what `YOLOR_DEVICE=cuda:N` means; `nvidia-smi -i N` numbers them in PCI
order and ignores CUDA_VISIBLE_DEVICES, so the GPU's name and compute capability are read from
`cudaGetDeviceProperties(N)` instead.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from service.backends.base import BackendError, BackendUnavailable

__all__ = ["Cuda", "import_cudart"]

# Errors that mean "no usable GPU here", not "this call went wrong".
NO_GPU_ERRORS = frozenset(
    {
        "cudaErrorInsufficientDriver",
        "cudaErrorNoDevice",
        "cudaErrorInvalidDevice",
        "cudaErrorDevicesUnavailable",
        "cudaErrorSystemDriverMismatch",
        "cudaErrorSystemNotReady",
        "cudaErrorCompatNotSupportedOnDevice",
    }
)


def import_cudart() -> Any:
    """cuda-python's runtime module; BackendUnavailable when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as e:
            raise BackendUnavailable(f"TensorRT needs cuda-python (pip install cuda-python): {e}") from e
    return runtime


class Cuda:
    """`cuda(rt.cudaFoo, *args)` runs one runtime call and returns its value (None when it has none).

    Raises BackendUnavailable for errors that mean no usable GPU, BackendError for the others.
    """

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    def __call__(self, fn: Any, *args: Any) -> Any:
        err, *values = fn(*args)
        if err != self.rt.cudaError_t.cudaSuccess:
            name = getattr(err, "name", str(err))
            failure = BackendUnavailable if name in NO_GPU_ERRORS else BackendError
            raise failure(f"CUDA {getattr(fn, '__name__', fn)} failed: {name} ({self.error_string(err)})")
        return values[0] if len(values) == 1 else None

    def error_string(self, err: Any) -> str:
        try:
            _, text = self.rt.cudaGetErrorString(err)
        except Exception:  # the message is a courtesy; the error's name is already there
            return "no description"
        return text.decode(errors="replace") if isinstance(text, bytes) else str(text)

    def set_device(self, index: int) -> None:
        """Make GPU `index` current for the calling thread (every thread that touches it must)."""
        self(self.rt.cudaSetDevice, index)

    def identity(self, index: int) -> tuple[str, str]:
        """(name, compute capability) of GPU `index`, e.g. ("NVIDIA H200", "9.0")."""
        props = self(self.rt.cudaGetDeviceProperties, index)
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return str(name).strip(), f"{int(props.major)}.{int(props.minor)}"

    def pinned_array(self, count: int, dtype: np.dtype[Any]) -> tuple[np.ndarray[Any, Any], int]:
        """A page-locked host array of `count` elements and its address; free it with cudaFreeHost.

        Allocated as bytes and viewed as `dtype`, so any numpy dtype works (ctypes has no float16).
        """
        nbytes = count * dtype.itemsize
        pointer = int(self(self.rt.cudaMallocHost, nbytes))
        try:
            raw = memoryview((ctypes.c_char * nbytes).from_address(pointer)).cast("B")
            return np.frombuffer(raw, dtype=np.uint8).view(dtype), pointer
        except BaseException:
            self.rt.cudaFreeHost(pointer)
            raise
