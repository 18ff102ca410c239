"""ONNX Runtime backend: the embedded default (CPU, or CUDA / TensorRT providers with onnxruntime-gpu).

What counts is `session.get_providers()` after the session exists, not `get_available_providers()`:
a provider whose libraries are missing is skipped (CUDA without cuDNN, say). It is logged and
reported as the backend's `device`.

`InferenceSession` has a fallback of its own: when the providers fail to initialise it prints a
banner to stdout and retries with CUDA/CPU *without their options* (a `cuda:1` session lands on
GPU 0), and `run` does the same on an EP failure. Sessions here are created with it off; `auto`
retries on the CPU itself, with a log line, and an explicit `cuda[:N]` fails. A session on another
GPU than the one asked for is refused.

The TensorRT provider is requested only when the TensorRT it links (onnxruntime-gpu 1.31:
libnvinfer.so.10) is installed: the GPU image has TensorRT 11, which serves through the native
TensorRT backend instead (`tools/check_gpu_packages.py` checks the image's pins).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from service.backends.base import BackendError, BackendUnavailable, BaseBackend, FloatBatch, device_index
from service.backends.elf_needed import ElfError, needed_libraries, soname_major
from service.backends.tensorrt_build import default_opt_batch
from service.processing.heads import Head

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
TENSORRT_EP_LIBRARY = "libonnxruntime_providers_tensorrt.so"
Providers = list[str | tuple[str, dict[str, Any]]]


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


def tensorrt_ep_major(ort_package: Path) -> int | None:
    """The TensorRT major that the TensorRT provider library of the onnxruntime installed at
    `ort_package` links (N of `libnvinfer.so.N` among its DT_NEEDED entries); None when the library
    cannot be read (logged) or names no libnvinfer."""
    library = ort_package / "capi" / TENSORRT_EP_LIBRARY
    try:
        return soname_major(needed_libraries(library), "nvinfer")
    except (OSError, ElfError) as e:
        log.warning("cannot read the TensorRT provider library %s: %s", library, e)
        return None


def installed_tensorrt_majors() -> dict[int, str]:
    """TensorRT majors this host has -> where: libnvinfer.so.N in the pip wheel's `tensorrt_libs`
    package (tensorrt-cuXX-libs), or the soname the loader finds (`ctypes.util.find_library`)."""
    found: dict[int, str] = {}
    spec = importlib.util.find_spec("tensorrt_libs")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for library in sorted(Path(folder).glob("libnvinfer.so.*")):
            major = soname_major([library.name], "nvinfer")
            if major is not None:
                found.setdefault(major, str(library))
    soname = ctypes.util.find_library("nvinfer")
    major = soname_major([soname], "nvinfer") if soname else None
    if major is not None:
        found.setdefault(major, f"{soname} on the loader's path")
    return found


def tensorrt_ep_problem(ep_major: int | None, installed: Mapping[int, str]) -> str | None:
    """Why onnxruntime's TensorRT provider cannot load here, or None when the TensorRT major its
    library links (`ep_major`) is among the `installed` ones (major -> where)."""
    if ep_major is None:
        return f"its {TENSORRT_EP_LIBRARY} names no libnvinfer.so.N: which TensorRT it needs is unknown"
    if ep_major in installed:
        return None
    here = ", ".join(f"TensorRT {m} ({where})" for m, where in sorted(installed.items()))
    return (
        f"onnxruntime's TensorRT provider needs TensorRT {ep_major} (libnvinfer.so.{ep_major}), "
        f"this host has {here or 'no TensorRT'}"
    )


def usable_providers(ort: Any) -> list[str]:
    """`ort.get_available_providers()`, less the TensorRT provider when the TensorRT it links is not
    installed (one log line says why): requested anyway, it fails to load."""
    available = list(ort.get_available_providers())
    if TENSORRT not in available:
        return available
    problem = tensorrt_ep_problem(tensorrt_ep_major(Path(ort.__file__).parent), installed_tensorrt_majors())
    if problem is None:
        return available
    instead = "; the CUDA provider runs the model" if CUDA in available else ""
    log.warning("%s not requested: %s%s", TENSORRT, problem, instead)
    return [p for p in available if p != TENSORRT]


def requested_providers(
    device: str,
    available: list[str],
    *,
    input_name: str,
    input_size: int,
    max_batch: int,
    cache_dir: Path | None,
) -> Providers:
    """Providers to ask for, best first, always ending with the CPU.

    device: "cpu" (CPU only), "cuda" / "cuda:N" (a GPU provider is required) or "auto".
    `available`: the providers that can load here (`usable_providers`). The TensorRT provider gets
    a dynamic-batch profile `1..max_batch` and an engine cache, so it builds once per shape profile
    instead of once per batch size. It gets no precision flag: the FP16 export is an FP16 graph
    (TensorRT 11 has no weakly typed FP16 mode to switch on).
    """
    if device == "cpu":
        return [CPU]
    device_id = device_index(device)
    providers: Providers = []
    if TENSORRT in available:
        shape = f"3x{input_size}x{input_size}"
        trt: dict[str, Any] = {
            "device_id": device_id,
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


def create_session(ort: Any, model_path: Path, options: Any, providers: Providers, device: str) -> Any:
    """An `InferenceSession` on `providers` with onnxruntime's fallback off, at creation and in `run`.

    When the GPU providers fail to initialise: `auto` retries on the CPU (logged), `cuda[:N]` raises
    BackendUnavailable. Raises BackendError for a model onnxruntime cannot load. onnxruntime 1.18
    ignores `enable_fallback`: what its fallback prints to stdout is logged instead.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=providers, enable_fallback=0
            )
    except (ValueError, RuntimeError) as e:  # what onnxruntime's fallback catches: a provider failed
        gpu = [p[0] for p in providers if isinstance(p, tuple) and p[0] in GPU_PROVIDERS]
        if device.startswith("cuda") and gpu:
            raise BackendUnavailable(f"device={device}: onnxruntime could not initialise {gpu}: {e}") from e
        if not gpu:
            raise BackendError(f"onnxruntime could not load {model_path}: {e}") from e
        log.warning("onnxruntime could not initialise %s (%s); device=auto: running on the CPU", gpu, e)
        return create_session(ort, model_path, options, [CPU], "cpu")
    except Exception as e:  # InvalidProtobuf, NoSuchFile, Fail, ... derive from Exception only
        raise BackendError(f"onnxruntime could not load {model_path}: {e}") from e
    finally:
        if printed.getvalue().strip():
            log.warning("onnxruntime: %s", " ".join(printed.getvalue().split()))
    session.disable_fallback()
    return session


def check_gpu_device(session: Any, device: str) -> None:
    """Raise BackendUnavailable unless every active GPU provider of `session` runs on the GPU that
    `device` names (`device_id` of `get_provider_options()`; "cuda" and "auto" mean GPU 0)."""
    wanted = device_index(device)
    options = session.get_provider_options()
    for provider in [p for p in session.get_providers() if p in GPU_PROVIDERS]:
        actual = options.get(provider, {}).get("device_id")
        if actual is None or int(actual) != wanted:
            raise BackendUnavailable(
                f"device={device}: onnxruntime runs {provider} on GPU {actual}, not GPU {wanted} "
                "(a provider fell back without its options)"
            )


class OnnxRuntimeBackend(BaseBackend):
    """One `InferenceSession` with graph optimisation level ALL and host-sized thread pools.

    `parallel_runs` > 1 (CPU): that many `infer` calls may run at once on the session (`run` is
    thread-safe), each on its own `intra_op_threads`; the batcher keeps that many independent
    batches in flight. Intra-op threads do not spin while waiting for work, so they leave idle
    cores to the server's decode threads.

    `profile` (input name, input size) only shapes the TensorRT provider's profile; the backend's
    input and output shapes are read from the loaded graph, so the server can check them against
    the manifest.

    `precision` is reported as given, else "fp16" when `fp16` says `model_path` is the FP16 export
    (its edges are float32, so the graph cannot tell) or the graph's input is float16, else "fp32".
    No provider option depends on it.
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
        # No memory pattern: with one, the runtime plans and keeps a block per input shape (a shape per
        # batch size, per concurrent run) in its arena, which a served process then holds resident;
        # without, intermediate tensors come and go through the same arena. Measured on the CPU: less
        # resident memory under load at the same speed (docs/benchmarks.md, "Resident memory").
        options.enable_mem_pattern = False
        providers = requested_providers(
            device,
            ort.get_available_providers() if device == "cpu" else usable_providers(ort),
            input_name=profile[0],
            input_size=profile[1],
            max_batch=max_batch_size,
            cache_dir=cache_dir,
        )
        session = create_session(ort, model_path, options, providers, device)
        active = session.get_providers()
        on_gpu = any(p in active for p in GPU_PROVIDERS)
        if device.startswith("cuda") and not on_gpu:
            raise BackendUnavailable(f"device={device} requested but onnxruntime activated only {active}")
        if on_gpu:
            check_gpu_device(session, device)
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
            precision=precision or ("fp16" if fp16 or self._input_dtype == np.float16 else "fp32"),
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
