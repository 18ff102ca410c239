"""ONNX Runtime backend: the embedded default (CPU, or CUDA / TensorRT providers with onnxruntime-gpu).

onnxruntime-gpu silently falls back to the CPU when a GPU provider fails to initialise (missing
CUDA/cuDNN libraries, no device), so what counts is `session.get_providers()` after the session
exists, not `get_available_providers()`; it is logged and reported as the backend's `device`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from service.backends.base import BackendError, BackendUnavailable, BaseBackend, FloatBatch
from service.backends.tensorrt_engines import default_opt_batch
from service.processing.heads import Head
from service.settings import device_index

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime is not installed: {e}") from e
    return onnxruntime


def gpu_providers_available() -> bool:
    """Whether this onnxruntime build ships a GPU provider (not whether one will initialise)."""
    try:
        available = _onnxruntime().get_available_providers()
    except BackendUnavailable:
        return False
    return any(p in available for p in GPU_PROVIDERS)


def requested_providers(
    device: str,
    available: list[str],
    *,
    input_name: str,
    input_size: int,
    max_batch: int,
    fp16: bool,
    cache_dir: Path | None,
) -> list[str | tuple[str, dict[str, Any]]]:
    """Providers to ask for, best first, always ending with the CPU.

    device: "cpu" (CPU only), "cuda" / "cuda:N" (a GPU provider is required) or "auto".
    The TensorRT provider gets a dynamic-batch profile `1..max_batch` and an engine cache, so it
    builds once per shape profile instead of once per batch size.
    """
    if device == "cpu":
        return [CPU]
    device_id = device_index(device)
    providers: list[str | tuple[str, dict[str, Any]]] = []
    if TENSORRT in available:
        shape = f"3x{input_size}x{input_size}"
        trt: dict[str, Any] = {
            "device_id": device_id,
            "trt_fp16_enable": fp16,
            "trt_profile_min_shapes": f"{input_name}:1x{shape}",
            "trt_profile_opt_shapes": f"{input_name}:{default_opt_batch(max_batch)}x{shape}",
            "trt_profile_max_shapes": f"{input_name}:{max_batch}x{shape}",
        }
        if cache_dir is not None:
            trt |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
        providers.append((TENSORRT, trt))
    if CUDA in available:
        providers.append((CUDA, {"device_id": device_id}))
    if device.startswith("cuda") and not providers:
        raise BackendUnavailable(
            f"device={device} but onnxruntime has no GPU provider (install onnxruntime-gpu)"
        )
    return [*providers, CPU]


class OnnxRuntimeBackend(BaseBackend):
    """One `InferenceSession` with graph optimisation level ALL and host-sized thread pools.

    `parallel_runs` > 1 (CPU): that many `infer` calls may run at once on the session (`run` is
    thread-safe), each on its own `intra_op_threads`; the batcher keeps that many independent
    batches in flight. Intra-op threads do not spin while waiting for work, so they leave idle
    cores to the server's decode threads.

    `profile` (input name, input size) only shapes the TensorRT provider's profile; the backend's
    input and output shapes are read from the loaded graph, so the server can check them against
    the manifest.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        head: Head,
        max_batch_size: int,
        profile: tuple[str, int],
        device: str = "cpu",
        intra_op_threads: int = 1,
        parallel_runs: int = 1,
        fp16: bool = False,
        precision: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # sequential execution: parallelism lives inside each op
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = requested_providers(
            device,
            ort.get_available_providers(),
            input_name=profile[0],
            input_size=profile[1],
            max_batch=max_batch_size,
            fp16=fp16,
            cache_dir=cache_dir,
        )
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as e:  # InvalidProtobuf, NoSuchFile, Fail, ... derive from Exception only
            raise BackendError(f"onnxruntime could not load {model_path}: {e}") from e
        active = session.get_providers()
        on_gpu = any(p in active for p in GPU_PROVIDERS)
        if device.startswith("cuda") and not on_gpu:
            raise BackendUnavailable(f"device={device} requested but onnxruntime activated only {active}")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(
                f"{model_path.name}: expected 1 input and 1 output, got {len(inputs)}, {len(outputs)}"
            )
        inp, out = inputs[0], outputs[0]
        if inp.type not in ONNX_FLOAT_TYPES or len(inp.shape) != 4:
            raise BackendError(
                f"{model_path.name}: input {inp.name} is {inp.type} {inp.shape}, not NCHW float"
            )
        self._session = session
        self._input_dtype = ONNX_FLOAT_TYPES[inp.type]
        self._output_name = out.name
        self.providers: list[str] = list(active)
        batch_dim, *chw = inp.shape
        super().__init__(
            name="onnxruntime",
            precision=precision
            or ("fp16" if self._input_dtype == np.float16 or (fp16 and TENSORRT in active) else "fp32"),
            device=", ".join(active)
            + ("" if on_gpu else f" ({_cpu_threads(parallel_runs, intra_op_threads)})"),
            head=head,
            max_batch_size=batch_dim if isinstance(batch_dim, int) else max_batch_size,
            input_name=inp.name,
            input_shape=tuple(d if isinstance(d, int) else -1 for d in chw),  # type: ignore[arg-type]
            output_shape=tuple(d if isinstance(d, int) else None for d in out.shape[1:]),
            concurrency=parallel_runs,
            accelerator=on_gpu,
        )
        log.info("onnxruntime %s loaded %s on %s", ort.__version__, model_path.name, self.device)

    def _infer(self, batch: FloatBatch) -> FloatBatch:
        feed = batch if self._input_dtype == np.float32 else batch.astype(self._input_dtype)
        (out,) = self._session.run([self._output_name], {self.input_name: feed})
        return np.asarray(out, dtype=np.float32)

    def _release(self) -> None:
        self._session = None


def _cpu_threads(parallel_runs: int, intra_op_threads: int) -> str:
    threads = f"{intra_op_threads} intra-op thread{'s' if intra_op_threads > 1 else ''}"
    return threads if parallel_runs == 1 else f"{parallel_runs} concurrent runs x {threads}"
