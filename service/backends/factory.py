"""Choose and load the backend the settings ask for, and check it against the manifest.

`auto`: TensorRT when TensorRT, cuda-python and a GPU are there and an engine exists or can be
built; otherwise ONNX Runtime (with its GPU providers if they really activate). Backend modules are
imported here lazily so that a host pays only for the runtime it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from service.backends.artifacts import ONNX_INT8_TENSORRT, onnx_key, resolve_artifact
from service.backends.base import Backend, BackendError, BackendUnavailable, device_index
from service.manifest import ManifestError, ModelManifest
from service.processing.heads import head_layout
from service.settings import Settings

log = logging.getLogger(__name__)


class BackendMismatch(BackendError):
    """The loaded backend does not fit the manifest (or the settings): refuse to serve it."""


def effective_max_batch(settings: Settings, manifest: ModelManifest, backend: Backend | None = None) -> int:
    """The largest batch: YOLOR_MAX_BATCH_SIZE when set (check_backend refuses one that does not fit),
    else the manifest's `max_batch`, lowered to what the loaded `backend` allows."""
    if settings.max_batch_size is not None:
        return settings.max_batch_size
    return manifest.max_batch if backend is None else min(manifest.max_batch, backend.max_batch_size)


def _precision(settings: Settings, on_gpu: bool) -> str:
    """fp16 on a GPU for `auto`; int8 only when asked for (it trades accuracy for speed)."""
    if settings.precision == "auto":
        return "fp16" if on_gpu else "fp32"
    return settings.precision


def _require_int8(manifest: ModelManifest, key: str, settings: Settings) -> None:
    if key not in manifest.artifacts:
        flag = " --int8-target tensorrt" if key == ONNX_INT8_TENSORRT else ""
        raise ManifestError(
            f"YOLOR_PRECISION=int8: {settings.model_dir}/model.json lists no {key!r} artifact; "
            f"export one with `yolor export CHECKPOINT --int8 --calib IMAGES{flag}`"
        )


def _onnxruntime(settings: Settings, manifest: ModelManifest) -> Backend:
    from service.backends.onnx_runtime import GPU_PROVIDERS, OnnxRuntimeBackend, gpu_providers_available

    # An explicit cuda device must get a GPU provider or fail; auto uses one only if this build has one.
    on_gpu = settings.device.startswith("cuda") or (settings.device == "auto" and gpu_providers_available())
    precision = _precision(settings, on_gpu)
    key = onnx_key(manifest.artifacts, precision)
    if precision == "int8":
        _require_int8(manifest, key, settings)
    backend = OnnxRuntimeBackend(
        resolve_artifact(settings.model_dir, manifest, key),
        head=manifest.head,
        max_batch_size=effective_max_batch(settings, manifest),
        profile=(manifest.input.name, manifest.input_size),
        device=settings.device if on_gpu else "cpu",
        intra_op_threads=settings.intra_op_threads,
        parallel_runs=1 if on_gpu else settings.parallel_runs,
        fp16=key == "onnx_fp16",  # the FP16 export's edges are float32: the graph cannot tell
        precision="int8" if precision == "int8" else None,  # the others read from the graph
        cache_dir=settings.engine_dir or settings.model_dir,
    )
    if key == "onnx_fp16" and not any(p in backend.providers for p in GPU_PROVIDERS):
        log.warning("no GPU provider activated; reloading the fp32 model for the CPU")
        backend.close()
        return _onnxruntime(settings.model_copy(update={"device": "cpu"}), manifest)
    return backend


def _tensorrt(settings: Settings, manifest: ModelManifest) -> Backend:
    from service.backends.tensorrt_runtime import load_tensorrt_backend

    precision = _precision(settings, on_gpu=True)
    if precision == "int8" and ONNX_INT8_TENSORRT not in manifest.artifacts:
        raise BackendUnavailable(  # auto goes on to ONNX Runtime's INT8 model; explicit says why
            f"no {ONNX_INT8_TENSORRT!r} artifact for a TensorRT INT8 engine (yolor export --int8 "
            "--int8-target tensorrt)"
        )
    return load_tensorrt_backend(
        manifest,
        precision=precision,
        model_dir=settings.model_dir,
        engine_dir=settings.engine_dir,
        device_index=device_index(settings.device),
        max_batch=effective_max_batch(settings, manifest),
    )


def _torch(settings: Settings, manifest: ModelManifest) -> Backend:
    from service.backends.torch_cuda import TorchCudaBackend

    if settings.checkpoint is not None:
        checkpoint = settings.checkpoint
    else:
        checkpoint = resolve_artifact(settings.model_dir, manifest, "checkpoint", verify=False)
    return TorchCudaBackend(
        checkpoint,
        input_size=manifest.input_size,
        max_batch_size=effective_max_batch(settings, manifest),
        device=f"cuda:{device_index(settings.device)}",
        top_k=manifest.top_k,  # the exported head's K: the same candidates as the ONNX graph's
    )


LOADERS = {"onnxruntime": _onnxruntime, "tensorrt": _tensorrt, "torch": _torch}


def create_backend(settings: Settings, manifest: ModelManifest) -> Backend:
    """The backend named by `settings.backend` ("auto": TensorRT, else ONNX Runtime).

    Raises BackendUnavailable (an explicitly chosen backend cannot run here), BackendError,
    ManifestError (artifact missing or not matching its checksum).
    """
    if settings.backend != "auto":
        return LOADERS[settings.backend](settings, manifest)
    if settings.device != "cpu":
        try:
            return _tensorrt(settings, manifest)
        except BackendUnavailable as e:
            log.info("TensorRT backend not used: %s", e)
    return _onnxruntime(settings, manifest)


BackendFactory = Callable[[Settings, ModelManifest], Backend]  # create_backend, or a fake in tests


def load_checked_backend(
    settings: Settings, manifest: ModelManifest, factory: BackendFactory = create_backend
) -> tuple[Backend, int]:
    """The backend `factory` loads, checked against the manifest, and the largest batch to form.

    A backend that does not fit is closed before BackendMismatch propagates.
    """
    backend = factory(settings, manifest)
    max_batch = effective_max_batch(settings, manifest, backend)
    try:
        check_backend(backend, manifest, max_batch)
    except BackendError:
        backend.close()
        raise
    return backend, max_batch


def check_backend(backend: Backend, manifest: ModelManifest, max_batch_size: int) -> None:
    """Refuse a backend whose input, output or batch limit does not fit the manifest.

    `max_batch_size` is the largest batch the server will form. Raises BackendMismatch.
    """
    problems = []
    expected_input = (3, manifest.input_size, manifest.input_size)
    if tuple(backend.input_shape) != expected_input:
        problems.append(f"input shape {tuple(backend.input_shape)} != manifest {expected_input}")
    if backend.head == manifest.head:
        expected_output = manifest.image_output_shape
    elif backend.head == "raw":  # the torch backend runs the net itself, without the exported head
        expected_output = head_layout("raw").image_shape(manifest.nc, None)
    else:
        expected_output = ()
        problems.append(f"backend head {backend.head!r} cannot serve a {manifest.head!r} model")
    actual = tuple(backend.output_shape)
    if expected_output and (
        len(actual) != len(expected_output)
        or any(
            a is not None and e is not None and a != e for a, e in zip(actual, expected_output, strict=True)
        )
    ):
        problems.append(f"output shape {actual} != manifest {expected_output}")
    if max_batch_size > manifest.max_batch:
        problems.append(f"max batch {max_batch_size} > manifest max_batch {manifest.max_batch}")
    if max_batch_size > backend.max_batch_size:
        problems.append(
            f"max batch {max_batch_size} > what the {backend.name} backend allows ({backend.max_batch_size})"
        )
    if problems:
        raise BackendMismatch(f"{backend.name} backend does not fit model.json: " + "; ".join(problems))
