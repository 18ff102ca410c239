"""Native TensorRT backend (TensorRT 10/11 Python API, CUDA runtime through cuda-python).

Thin on purpose: it deserializes an engine, binds I/O by tensor name (`get_tensor_name`,
`get_tensor_mode`), sets the batch with `set_input_shape` and runs `execute_async_v3` on its own
stream, with pinned host buffers and device buffers sized once for the profile's largest batch.
Engines are built by `service.backends.tensorrt_engines` (shared with the export stage) when the cached
one is missing or was built for another GPU, TensorRT version or ONNX file.

It has NOT been run in this repository's CI: that needs an NVIDIA GPU, TensorRT >= 10 and
cuda-python. Everything here is imported lazily, so the module imports anywhere.
"""

from __future__ import annotations

import ctypes
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from service.backends.base import BackendError, BackendUnavailable, BaseBackend, FloatBatch
from service.backends.tensorrt_engines import ENGINE_MANIFEST_NAME, ENGINE_NAME
from service.manifest import ModelManifest
from service.processing.heads import Head
from service.settings import Settings, device_index

log = logging.getLogger(__name__)


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(f"tensorrt is not installed: {e}") from e
    return tensorrt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BackendUnavailable(f"the tensorrt backend needs cuda-python: {e}") from e
    return cudart


class _Cuda:
    """The few CUDA runtime calls used, raising on error (cuda-python returns (err, *values))."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def __call__(self, fn: Any, *args: Any) -> Any:
        err, *values = fn(*args)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {fn.__name__} failed: {err}")
        return values[0] if len(values) == 1 else None

    def pinned_array(self, count: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
        pointer = self(self.rt.cudaMallocHost, count * dtype.itemsize)
        ctype = ctypes.POINTER(np.ctypeslib.as_ctypes_type(dtype))
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctype), (count,)), int(pointer)


class TensorRTBackend(BaseBackend):
    """One engine with one input and one output, one execution context and one CUDA stream."""

    def __init__(self, engine_path: Path, *, head: Head, precision: str, device_index: int = 0) -> None:
        trt = _import_tensorrt()
        self._cuda = cuda = _Cuda(_import_cudart())
        self._device_index = device_index
        cuda(cuda.rt.cudaSetDevice, device_index)
        self._logger = trt.Logger(trt.Logger.WARNING)  # must outlive the engine
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT could not deserialize {engine_path} (see the TensorRT log)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(
                f"{engine_path}: expected 1 input and 1 output tensor, got {inputs}, {outputs}"
            )
        self._input, self._output = inputs[0], outputs[0]
        _, _, largest = self._engine.get_tensor_profile_shape(self._input, 0)
        self._context = self._engine.create_execution_context()
        self._context.set_input_shape(self._input, tuple(largest))
        out_largest = tuple(self._context.get_tensor_shape(self._output))
        self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._output)))
        self._stream = cuda(cuda.rt.cudaStreamCreate)
        self._host_in, self._host_in_ptr = cuda.pinned_array(int(np.prod(largest)), self._in_dtype)
        self._host_out, self._host_out_ptr = cuda.pinned_array(int(np.prod(out_largest)), self._out_dtype)
        self._dev_in = cuda(cuda.rt.cudaMalloc, self._host_in.nbytes)
        self._dev_out = cuda(cuda.rt.cudaMalloc, self._host_out.nbytes)
        self._context.set_tensor_address(self._input, int(self._dev_in))
        self._context.set_tensor_address(self._output, int(self._dev_out))
        super().__init__(
            name="tensorrt",
            precision=precision,
            device=f"cuda:{device_index} (TensorRT {trt.__version__})",
            head=head,
            max_batch_size=int(largest[0]),
            input_name=self._input,
            input_shape=(int(largest[1]), int(largest[2]), int(largest[3])),
            output_shape=tuple(int(d) for d in out_largest[1:]),
            accelerator=True,
        )

    def _infer(self, batch: FloatBatch) -> FloatBatch:
        cuda, rt = self._cuda, self._cuda.rt
        cuda(rt.cudaSetDevice, self._device_index)  # per thread: the batcher's worker is not the loader
        host_in = self._host_in[: batch.size].reshape(batch.shape)
        host_in[...] = batch  # casts when the engine's input is not float32
        self._context.set_input_shape(self._input, batch.shape)
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        host_out = self._host_out[: int(np.prod(out_shape))].reshape(out_shape)
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda(rt.cudaMemcpyAsync, self._dev_in, self._host_in_ptr, host_in.nbytes, h2d, self._stream)
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        cuda(rt.cudaMemcpyAsync, self._host_out_ptr, self._dev_out, host_out.nbytes, d2h, self._stream)
        cuda(rt.cudaStreamSynchronize, self._stream)
        return host_out.astype(np.float32, copy=True)  # the pinned buffer is reused by the next batch

    def _release(self) -> None:
        rt = self._cuda.rt
        for free, pointer in (
            (rt.cudaFree, self._dev_in),
            (rt.cudaFree, self._dev_out),
            (rt.cudaFreeHost, self._host_in_ptr),
            (rt.cudaFreeHost, self._host_out_ptr),
        ):
            free(pointer)
        rt.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._runtime = None


def _read_engine_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _find_engine(builder: Any, directories: list[Path], **wanted: Any) -> tuple[Path | None, str]:
    """The first `model.engine` in `directories` whose engine manifest matches `wanted`, and why not."""
    why = f"no engine in {', '.join(map(str, directories))}"
    for directory in directories:
        meta = _read_engine_manifest(directory / ENGINE_MANIFEST_NAME)
        if (directory / ENGINE_NAME).is_file() and meta is not None:
            matches, why = builder.engine_matches(meta, **wanted)
            if matches:
                return directory / ENGINE_NAME, why
    return None, why


def load_tensorrt_backend(settings: Settings, manifest: ModelManifest, *, precision: str) -> TensorRTBackend:
    """The engine for this GPU and TensorRT version, built from the manifest's ONNX when needed.

    An engine is reused from `engine_dir`, then from the model directory (one built by the export),
    when its manifest matches the ONNX, TensorRT version, GPU and batch size; otherwise it is built
    into `engine_dir` (default: the model directory). Raises BackendUnavailable when TensorRT,
    cuda-python or a GPU is missing, or the build fails.
    """
    try:
        from service.backends import tensorrt_engines as builder
        from service.backends.artifacts import onnx_key
        from service.backends.factory import effective_max_batch
        from service.backends.gpu_info import gpu_identity
    except ImportError as e:
        raise BackendUnavailable(f"the TensorRT engine builder is not importable: {e}") from e
    version = builder.tensorrt_version()
    if version is None:
        raise BackendUnavailable("tensorrt is not installed")
    index = device_index(settings.device)
    identity = gpu_identity(index)
    if identity is None:
        raise BackendUnavailable("no CUDA GPU is visible (nvidia-smi)")
    source_key = onnx_key(manifest.artifacts, precision, tensorrt=True)
    source = manifest.artifacts[source_key]
    max_batch = effective_max_batch(settings, manifest)
    target = settings.engine_dir or settings.model_dir
    engine_path, why = _find_engine(
        builder,
        list(dict.fromkeys([target, settings.model_dir])),
        onnx_sha256=source.sha256,
        tensorrt_version=version,
        gpu_name=identity[0],
        compute_capability=identity[1],
        max_batch=max_batch,
    )
    if engine_path is None:
        log.warning("building a TensorRT engine in %s (%s); this takes minutes", target, why)
        engine_path = _build(builder, settings, manifest, source_key, target, max_batch)
    log.info("TensorRT %s engine %s", version, engine_path)
    return TensorRTBackend(engine_path, head=manifest.head, precision=source.precision, device_index=index)


def _build(
    builder: Any, settings: Settings, manifest: ModelManifest, source_key: str, target: Path, max_batch: int
) -> Path:
    from service.backends.artifacts import resolve_artifact

    source = manifest.artifacts[source_key]
    onnx_path = resolve_artifact(settings.model_dir, manifest, source_key)
    engine_path = target / ENGINE_NAME
    try:
        target.mkdir(parents=True, exist_ok=True)
        meta = builder.build_engine(
            onnx_path,
            engine_path,
            builder.EngineOptions(max_batch=max_batch),
            onnx_sha256=source.sha256,
            precision=source.precision,
        )
        builder.write_engine_manifest(meta, target / ENGINE_MANIFEST_NAME)
    except builder.TensorRTUnavailable as e:
        raise BackendUnavailable(str(e)) from e
    except (RuntimeError, ValueError, OSError) as e:
        raise BackendUnavailable(f"building {engine_path} failed (is YOLOR_ENGINE_DIR writable?): {e}") from e
    return engine_path
