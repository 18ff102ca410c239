"""TensorRT engines: build one from an exported ONNX graph (its manifest and the engine directory's
rules are `engine_cache`'s).

Two callers: the server at start-up (`tensorrt_runtime.load_tensorrt_backend` builds an engine into
its engine directory when no cached one matches this GPU, TensorRT version and ONNX file) and
`yolor export --engine`. It lives in `service/` so that the serving image, which has no torch, can
build engines; deserializing and running one is `tensorrt_runtime`'s job. `tensorrt` is imported
inside functions, so this module imports (and its pure helpers work) without TensorRT or a GPU.

Engines are built from a *strongly typed* network: layer precisions come from the ONNX graph itself
(an FP16 ONNX gives an FP16 engine) instead of builder precision flags, which TensorRT 11 removed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.backends.base import BackendError
from service.backends.cudart import Cuda, import_cudart
from service.backends.engine_cache import Shape4, atomic_write, make_engine_manifest

__all__ = [
    "EngineOptions", "TensorRTUnavailable", "build_engine", "default_opt_batch", "default_timing_cache_path",
    "profile_shapes", "require_tensorrt", "tensorrt_logger", "tensorrt_version",
]  # fmt: skip

_log = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10
NOT_INSTALLED = (
    "TensorRT is not installed in this environment (pip install tensorrt-cu13 cuda-python "
    "--extra-index-url https://pypi.nvidia.com; needs an NVIDIA GPU and driver); "
    "ONNX artifacts are unaffected"
)
NO_GPU = (
    "TensorRT is installed but GPU cuda:{index} cannot be used ({reason}); "
    "engines can only be built on the GPU model that will run them"
)


def default_opt_batch(max_batch: int) -> int:
    """The batch size TensorRT tunes kernels for when none is given: half the largest (at least 1)."""
    return max(1, max_batch // 2)


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU for it) is not available here; ONNX export and serving are unaffected."""


@dataclass(frozen=True)
class EngineOptions:
    """How to build an engine. `opt_batch` defaults to half of `max_batch` (at least 1)."""

    max_batch: int = 16
    opt_batch: int | None = None
    workspace_mb: int = 4096
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.opt_batch is None:
            object.__setattr__(self, "opt_batch", default_opt_batch(self.max_batch))
        elif not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"opt_batch must be in [1, max_batch={self.max_batch}], got {self.opt_batch}")
        if self.workspace_mb <= 0:
            raise ValueError(f"workspace_mb must be > 0, got {self.workspace_mb}")
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))


def profile_shapes(input_chw: tuple[int, int, int], options: EngineOptions) -> tuple[Shape4, Shape4, Shape4]:
    """(min, opt, max) NCHW shapes of the single optimization profile: batch 1, opt and max."""
    c, h, w = input_chw
    if min(c, h, w) < 1:
        raise ValueError(f"C, H, W must be positive, got {input_chw}")
    opt = options.opt_batch if options.opt_batch is not None else default_opt_batch(options.max_batch)
    return (1, c, h, w), (opt, c, h, w), (options.max_batch, c, h, w)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part.strip()).strip("_") or "unknown"


def default_timing_cache_path(
    trt_version: str, gpu_name: str, compute_capability: str, cache_dir: Path | None = None
) -> Path:
    """Where the timing cache for this (TensorRT version, GPU) lives; the file may not exist yet.

    Directory: `cache_dir`, else `$YOLOR_CACHE_DIR/tensorrt`, else `~/.cache/yolor/tensorrt`.
    Name, e.g.: `timing-10.13.0-NVIDIA_H200-sm90.cache`.
    """
    if not re.fullmatch(r"\d+\.\d+", compute_capability):
        raise ValueError(f"compute capability must look like '9.0', got {compute_capability!r}")
    if cache_dir is None:
        root = os.environ.get("YOLOR_CACHE_DIR")
        cache_dir = Path(root) / "tensorrt" if root else Path.home() / ".cache" / "yolor" / "tensorrt"
    sm = compute_capability.replace(".", "")
    return Path(cache_dir) / f"timing-{_safe(trt_version)}-{_safe(gpu_name)}-sm{sm}.cache"


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when `tensorrt` cannot be imported."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def _tensorrt_and_gpu(device_index: int) -> tuple[Any, str, str]:
    """(tensorrt module, GPU name, compute capability) with GPU `device_index` made current for the
    calling thread (TensorRT builds on the current device); raises TensorRTUnavailable."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(NOT_INSTALLED) from exc
    version = str(trt.__version__)
    major = re.match(r"\d+", version)
    if major is None or int(major.group()) < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailable(f"TensorRT {version} is too old: building engines needs TensorRT >= 10")
    try:
        cuda = Cuda(import_cudart())
        cuda.set_device(device_index)
        name, capability = cuda.identity(device_index)
    except BackendError as exc:
        raise TensorRTUnavailable(NO_GPU.format(index=device_index, reason=exc)) from exc
    return trt, name, capability


def require_tensorrt(device_index: int = 0) -> str:
    """Fail fast, before minutes of export work: the TensorRT version if an engine can be built here.

    Raises TensorRTUnavailable when TensorRT >= 10 or cuda-python is not importable, or GPU
    `device_index` cannot be used.
    """
    trt, _, _ = _tensorrt_and_gpu(device_index)
    return str(trt.__version__)


@functools.cache
def tensorrt_logger(trt: Any) -> Any:
    """The one TensorRT logger of this process, for the builder and the runtime alike: it forwards to
    Python logging (TensorRT's own `trt.Logger` prints to stdout, which breaks JSON logs). TensorRT
    keeps the first logger it is given for the whole process and warns about any other."""
    sev = trt.ILogger.Severity
    levels = {
        sev.INTERNAL_ERROR: logging.CRITICAL,
        sev.ERROR: logging.ERROR,
        sev.WARNING: logging.WARNING,
        sev.INFO: logging.INFO,
        sev.VERBOSE: logging.DEBUG,
    }

    # The base class exists only at run time (tensorrt is imported lazily), so mypy sees Any.
    class _ToLogging(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.DEBUG)
            if _log.isEnabledFor(level):
                _log.log(level, "TensorRT: %s", msg)

    return _ToLogging()


def _input_shapes(name: str, shape: tuple[int, ...], options: EngineOptions) -> tuple[Shape4, Shape4, Shape4]:
    """Profile shapes for the network input; refuses inputs without a dynamic batch axis."""
    if len(shape) != 4:
        raise ValueError(f"network input {name!r} has shape {shape}; an NCHW (4-D) input is required")
    if shape[0] != -1:
        raise ValueError(
            f"network input {name!r} has a fixed batch size {shape[0]} (shape {shape}); "
            "re-export the ONNX with a dynamic batch axis"
        )
    if min(shape[1:]) < 1:
        raise ValueError(f"network input {name!r} has a dynamic C, H or W (shape {shape}); only N may be")
    return profile_shapes((shape[1], shape[2], shape[3]), options)


def _attach_timing_cache(config: Any, path: Path) -> Any:
    """Load the timing cache at `path` if usable, else start an empty one; attach it to `config`."""
    if path.is_file():
        try:
            cache = config.create_timing_cache(path.read_bytes())
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                _log.info("using timing cache %s", path)
                return cache
        except (RuntimeError, TypeError, ValueError) as exc:
            _log.warning("timing cache %s is unreadable: %s", path, exc)
        _log.warning("ignoring timing cache %s (built by another TensorRT/GPU or corrupt)", path)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    options: EngineOptions,
    *,
    onnx_sha256: str,
    precision: Literal["fp32", "fp16", "int8"],
    device_index: int = 0,
) -> dict[str, Any]:
    """Build a TensorRT engine from `onnx_path`, write it atomically to `engine_path`, return its manifest.

    `precision` records what the ONNX holds; it does not change the build (the network is strongly
    typed: an INT8 engine comes from the Q/DQ nodes of `yolor export --int8 --int8-target tensorrt`).
    It builds on GPU `device_index` (CUDA's numbering, as `YOLOR_DEVICE=cuda:N`), whose name and
    compute capability the manifest and the timing cache's name record. The timing cache is read
    before and rewritten after the build. Raises TensorRTUnavailable (no TensorRT >= 10, no
    cuda-python, no such GPU), FileNotFoundError, ValueError (not exactly one input, or one without a
    dynamic batch axis) and RuntimeError (parse or build failure).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be 'fp32', 'fp16' or 'int8', got {precision!r}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    trt, gpu_name, capability = _tensorrt_and_gpu(device_index)
    version = str(trt.__version__)
    cache_path = options.timing_cache or default_timing_cache_path(version, gpu_name, capability)

    start = time.perf_counter()
    data, input_name, shapes, cache_data = _build_serialized(trt, onnx_path, options, cache_path)
    seconds = time.perf_counter() - start
    atomic_write(engine_path, data)
    try:
        atomic_write(cache_path, cache_data)
    except OSError as exc:  # a lost cache only slows the next build down
        _log.warning("could not write timing cache %s: %s", cache_path, exc)
    _log.info("wrote %s (%.1f MB) in %.1f s", engine_path, len(data) / 1e6, seconds)
    return make_engine_manifest(
        tensorrt_version=version,
        gpu_name=gpu_name,
        compute_capability=capability,
        input_name=input_name,
        shapes=shapes,
        workspace_mb=options.workspace_mb,
        precision=precision,
        onnx_sha256=onnx_sha256,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        build_seconds=seconds,
        timing_cache=cache_path,
    )


def _build_serialized(
    trt: Any, onnx_path: Path, options: EngineOptions, cache_path: Path
) -> tuple[bytes, str, tuple[Shape4, Shape4, Shape4], bytes]:
    """Parse and build; returns (engine bytes, input name, profile shapes, updated timing cache bytes)."""
    # The logger must outlive every TensorRT object, and the parser owns the weights the network
    # points at, so both stay referenced until the build is done.
    logger = tensorrt_logger(trt)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:  # pybind reports a failed CUDA init as TypeError
        raise TensorRTUnavailable(f"TensorRT could not create a builder (CUDA init?): {exc}") from exc
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    if network.num_inputs != 1:
        raise ValueError(f"{onnx_path} has {network.num_inputs} inputs; exactly one is supported")
    tensor = network.get_input(0)
    shapes = _input_shapes(tensor.name, tuple(tensor.shape), options)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    timing_cache = _attach_timing_cache(config, cache_path)
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)

    _log.info("building a TensorRT %s engine from %s, profile %s", trt.__version__, onnx_path, shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log)")
    return bytes(serialized), str(tensor.name), shapes, bytes(timing_cache.serialize())
