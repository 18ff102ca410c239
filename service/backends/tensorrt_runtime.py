"""Native TensorRT backend (TensorRT 10/11 Python API, CUDA runtime through cuda-python).

Thin on purpose: it deserializes an engine, binds I/O by tensor name (`get_tensor_name`,
`get_tensor_mode`), sets the batch with `set_input_shape` and runs `execute_async_v3` on its own
stream, with pinned host buffers and device buffers sized once for the profile's largest batch.
Engines are built by `tensorrt_build` (shared with the export stage) into the engine directory
(`engine_cache`) when the cached one is missing, was built for another GPU, TensorRT version or ONNX
file, or is not the file its manifest describes.

What was run where (docs/gpu.md): the whole backend, engine reuse and building run in the
tests against a fake TensorRT (an echo engine, FLOAT and HALF I/O) and a fake CUDA runtime, and the
TensorRT names and signatures the code uses are checked against the real TensorRT 10 and 11 Python
bindings; no real engine has been run (no GPU with TensorRT has been available). Everything here is
imported lazily, so the module imports anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from service.backends import engine_cache, tensorrt_build
from service.backends.base import BackendError, BackendUnavailable, BaseBackend, FloatBatch
from service.backends.cudart import Cuda, import_cudart
from service.backends.engine_cache import ENGINE_MANIFEST_NAME, ENGINE_NAME
from service.backends.tensorrt_build import tensorrt_logger
from service.manifest import ModelManifest
from service.processing.heads import Head

log = logging.getLogger(__name__)


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(f"tensorrt is not installed: {e}") from e
    return tensorrt


def _io_dtype(trt: Any, engine: Any, name: str) -> np.dtype[Any]:
    """The numpy dtype of an engine tensor; BackendUnavailable unless float32 or float16 (images go in
    as floats, and the server reads floats back)."""
    dtype = engine.get_tensor_dtype(name)
    floats = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
    if dtype not in floats:
        raise BackendUnavailable(f"engine tensor {name!r} is {dtype}; only FLOAT and HALF are supported")
    return np.dtype(floats[dtype])


class TensorRTBackend(BaseBackend):
    """One engine with one input and one output, one execution context and one CUDA stream.

    Raises BackendUnavailable (no tensorrt or cuda-python, no usable GPU `device_index`, tensors of a
    type it cannot feed) or BackendError; whatever it allocated before failing is freed first.
    """

    def __init__(self, engine_path: Path, *, head: Head, precision: str, device_index: int = 0) -> None:
        trt = _import_tensorrt()
        self._cuda = Cuda(import_cudart())
        self._device_index = device_index
        self._resources = contextlib.ExitStack()  # frees what was allocated, last first
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._cuda.set_device(device_index)  # no driver, no such GPU: unavailable, nothing allocated yet
        try:
            largest, out_largest = self._load(trt, Path(engine_path))
        except BaseException:
            self._release()
            raise
        super().__init__(
            name="tensorrt",
            precision=precision,
            device=f"cuda:{device_index} (TensorRT {trt.__version__})",
            head=head,
            max_batch_size=largest[0],
            input_name=self._input,
            input_shape=(largest[1], largest[2], largest[3]),
            output_shape=out_largest[1:],
            accelerator=True,
        )

    def _load(self, trt: Any, engine_path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Deserialize, bind and allocate; returns the largest input and output shapes."""
        cuda, rt = self._cuda, self._cuda.rt
        self._runtime = trt.Runtime(tensorrt_logger(trt))  # the logger outlives the engine: it is global
        engine = self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise BackendError(f"TensorRT could not deserialize {engine_path} (see the TensorRT log)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{engine_path}: expected 1 input and 1 output tensor: {inputs}, {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        in_dtype, out_dtype = _io_dtype(trt, engine, self._input), _io_dtype(trt, engine, self._output)
        _, _, largest_dims = engine.get_tensor_profile_shape(self._input, 0)
        largest = tuple(int(d) for d in largest_dims)
        if len(largest) != 4:
            raise BackendError(f"{engine_path}: input {self._input!r} has shape {largest}, not NCHW")
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for {engine_path}")
        self._set_input_shape(largest)
        out_largest = tuple(int(d) for d in self._context.get_tensor_shape(self._output))
        self._stream = cuda(rt.cudaStreamCreate)
        self._resources.callback(self._free, rt.cudaStreamDestroy, self._stream)
        self._host_in, self._host_in_ptr = cuda.pinned_array(math.prod(largest), in_dtype)
        self._resources.callback(self._free, rt.cudaFreeHost, self._host_in_ptr)
        self._host_out, self._host_out_ptr = cuda.pinned_array(math.prod(out_largest), out_dtype)
        self._resources.callback(self._free, rt.cudaFreeHost, self._host_out_ptr)
        self._dev_in = cuda(rt.cudaMalloc, self._host_in.nbytes)
        self._resources.callback(self._free, rt.cudaFree, self._dev_in)
        self._dev_out = cuda(rt.cudaMalloc, self._host_out.nbytes)
        self._resources.callback(self._free, rt.cudaFree, self._dev_out)
        for name, pointer in ((self._input, self._dev_in), (self._output, self._dev_out)):
            if not self._context.set_tensor_address(name, int(pointer)):
                raise BackendError(f"TensorRT refused the device address of tensor {name!r}")
        return largest, out_largest

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(self._input, shape):
            raise BackendError(
                f"TensorRT refused input shape {shape} for {self._input!r} (outside the engine's profile?)"
            )

    def _infer(self, batch: FloatBatch) -> FloatBatch:
        cuda, rt = self._cuda, self._cuda.rt
        cuda.set_device(self._device_index)  # per thread: the batcher's worker is not the loader
        host_in = self._host_in[: batch.size].reshape(batch.shape)
        host_in[...] = batch  # casts when the engine's input is float16
        self._set_input_shape(batch.shape)
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        host_out = self._host_out[: math.prod(out_shape)].reshape(out_shape)
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda(rt.cudaMemcpyAsync, self._dev_in, self._host_in_ptr, host_in.nbytes, h2d, self._stream)
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        cuda(rt.cudaMemcpyAsync, self._host_out_ptr, self._dev_out, host_out.nbytes, d2h, self._stream)
        cuda(rt.cudaStreamSynchronize, self._stream)
        return host_out.astype(np.float32, copy=True)  # the pinned buffer is reused by the next batch

    def _free(self, free: Any, handle: Any) -> None:
        """One release call; a failure is logged, not raised, so that the others still run."""
        err, *_ = free(handle)
        if err != self._cuda.rt.cudaError_t.cudaSuccess:
            log.warning("TensorRT backend: CUDA %s failed while releasing: %s", free.__name__, err)

    def _release(self) -> None:
        """Free on GPU `device_index` whichever thread closes (the event loop's, at a reload)."""
        self._context = self._engine = self._runtime = None  # TensorRT objects first
        try:
            self._cuda.set_device(self._device_index)
        except BackendError as e:
            log.warning("TensorRT backend: releasing without its device current: %s", e)
        self._resources.close()


def load_tensorrt_backend(
    manifest: ModelManifest,
    *,
    precision: str,
    model_dir: Path,
    engine_dir: Path | None,
    device_index: int,
    max_batch: int,
) -> TensorRTBackend:
    """The engine for this GPU and TensorRT version, built from the manifest's ONNX when needed.

    An engine is reused from `engine_dir`, then from `model_dir` (one built by the export), when its
    manifest matches the ONNX, TensorRT version, GPU and `max_batch`; otherwise it is built into
    `engine_dir` (default: `model_dir`), one process at a time. Raises BackendUnavailable when
    TensorRT, cuda-python or GPU `device_index` is missing, the engine directory is not writable, or
    the build fails; those are checked before a build, which takes minutes.
    """
    from service.backends.artifacts import onnx_key

    version = tensorrt_build.tensorrt_version()
    if version is None:
        raise BackendUnavailable("tensorrt is not installed")
    index = device_index
    cuda = Cuda(import_cudart())
    try:
        cuda.set_device(index)
        gpu_name, capability = cuda.identity(index)
    except BackendError as e:
        raise BackendUnavailable(f"GPU cuda:{index} cannot be used: {e}") from e
    source_key = onnx_key(manifest.artifacts, precision, tensorrt=True)
    source = manifest.artifacts[source_key]
    target = engine_dir or model_dir
    search = list(dict.fromkeys([target, model_dir]))
    wanted = {
        "onnx_sha256": source.sha256,
        "tensorrt_version": version,
        "gpu_name": gpu_name,
        "compute_capability": capability,
        "max_batch": max_batch,
    }
    engine_path, why = engine_cache.find_engine(search, **wanted)
    if engine_path is None:
        try:
            engine_cache.check_writable(target)
        except OSError as e:
            raise BackendUnavailable(
                f"a TensorRT engine must be built ({why}) but {target} is not writable "
                f"(set YOLOR_ENGINE_DIR to a writable directory): {e}"
            ) from e
        with engine_cache.build_lock(target):
            engine_path, why = engine_cache.find_engine(search, **wanted)  # another worker may have built it
            if engine_path is None:
                log.warning("building a TensorRT engine in %s (%s); this takes minutes", target, why)
                engine_path = _build(model_dir, manifest, source_key, target, max_batch, index)
    log.info("TensorRT %s engine %s on cuda:%d (%s)", version, engine_path, index, gpu_name)
    return TensorRTBackend(engine_path, head=manifest.head, precision=source.precision, device_index=index)


def _build(
    model_dir: Path,
    manifest: ModelManifest,
    source_key: str,
    target: Path,
    max_batch: int,
    index: int,
) -> Path:
    from service.backends.artifacts import resolve_artifact

    source = manifest.artifacts[source_key]
    onnx_path = resolve_artifact(model_dir, manifest, source_key)
    engine_path = target / ENGINE_NAME
    try:
        # No manifest beside a half-replaced engine: a build killed from here on leaves none.
        (target / ENGINE_MANIFEST_NAME).unlink(missing_ok=True)
        meta = tensorrt_build.build_engine(
            onnx_path,
            engine_path,
            tensorrt_build.EngineOptions(max_batch=max_batch),
            onnx_sha256=source.sha256,
            precision=source.precision,
            device_index=index,
        )
        engine_cache.write_engine_manifest(meta, target / ENGINE_MANIFEST_NAME)
    except tensorrt_build.TensorRTUnavailable as e:
        raise BackendUnavailable(str(e)) from e
    except (RuntimeError, ValueError, OSError) as e:
        raise BackendUnavailable(f"building {engine_path} failed: {e}") from e
    return engine_path
