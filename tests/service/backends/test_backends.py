"""Backends: the validated interface, ONNX Runtime on a tiny model, selection, manifest checks, the
TensorRT engine cache decisions (with TensorRT itself stubbed: it cannot run here)."""

from __future__ import annotations

import importlib.util
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.backends import BackendClosed, BackendError, BackendUnavailable, FakeBackend
from service.backends.artifacts import onnx_key
from service.backends.base import device_index
from service.backends.factory import BackendMismatch, check_backend, create_backend, effective_max_batch
from service.backends.onnx_runtime import CPU, CUDA, TENSORRT, requested_providers
from service.manifest import ManifestError
from service.settings import Settings
from tests.support.model_files import MAX_BATCH, TOP_K, tiny_reference, write_model_dir

pytestmark = pytest.mark.unit
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def zeros_fn(batch: np.ndarray) -> np.ndarray:
    return np.zeros((len(batch), TOP_K, 6), np.float32)


def fake(fn=zeros_fn, max_batch_size=4, **kwargs) -> FakeBackend:
    return FakeBackend(fn, input_size=64, output_shape=(TOP_K, 6), max_batch_size=max_batch_size, **kwargs)


@pytest.mark.parametrize(
    ("batch", "error"),
    [
        (np.zeros((1, 3, 64, 64), np.float64), TypeError),
        (np.zeros((1, 3, 64, 64), np.uint8), TypeError),
        ([[0.0]], TypeError),
        (np.zeros((1, 3, 32, 64), np.float32), ValueError),
        (np.zeros((3, 64, 64), np.float32), ValueError),
        (np.zeros((0, 3, 64, 64), np.float32), ValueError),
        (np.zeros((5, 3, 64, 64), np.float32), ValueError),  # over max_batch_size
    ],
)
def test_infer_validates_its_input(batch, error):
    with pytest.raises(error):
        fake().infer(batch)


@pytest.mark.parametrize(
    "fn",
    [
        lambda b: np.zeros((len(b), TOP_K, 6), np.float64),
        lambda b: np.zeros((len(b), TOP_K + 1, 6), np.float32),
        lambda b: np.zeros((len(b) + 1, TOP_K, 6), np.float32),
        lambda b: np.zeros((len(b), TOP_K * 6), np.float32),
        lambda b: [[0.0] * 6] * TOP_K,
    ],
)
def test_infer_validates_the_output(fn):
    with pytest.raises(BackendError):
        fake(fn).infer(np.zeros((1, 3, 64, 64), np.float32))


def test_fake_backend_runs_its_function_and_records_batches():
    backend = fake(lambda b: np.full((len(b), TOP_K, 6), b.mean(), np.float32))
    out = backend.infer(np.full((3, 3, 64, 64), 0.5, np.float32))
    assert out.shape == (3, TOP_K, 6) and np.all(out == 0.5)
    assert backend.batch_sizes == [3]
    backend.close()
    assert backend.closed


def test_onnxruntime_backend_on_the_tiny_model(tmp_path):
    pytest.importorskip("onnx")
    manifest = write_model_dir(tmp_path, onnx=True)
    settings = Settings(
        model_dir=tmp_path, backend="onnxruntime", device="cpu", onnx_intra_op_threads=2, onnx_parallel_runs=1
    )
    backend = create_backend(settings, manifest)
    batch = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    # No memory pattern (the resident-memory decision in onnx_runtime.py), spinning off, as configured.
    options = backend._session.get_session_options()
    assert not options.enable_mem_pattern and options.enable_cpu_mem_arena
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    try:
        out = backend.infer(batch)
    finally:
        backend.close()
    assert (backend.name, backend.precision, backend.head) == ("onnxruntime", "fp32", "topk")
    assert backend.input_name == "images" and backend.input_shape == (3, 64, 64)
    assert backend.output_shape == (TOP_K, 6)
    assert backend.max_batch_size == MAX_BATCH  # the graph's batch axis is dynamic: the manifest's limit
    assert backend.device == "CPUExecutionProvider (2 intra-op threads)"
    np.testing.assert_allclose(out, tiny_reference(batch), atol=1e-6)
    check_backend(backend, manifest, MAX_BATCH)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: auto would pick it")
def test_auto_falls_back_to_onnxruntime_without_tensorrt(tmp_path):
    pytest.importorskip("onnx")
    manifest = write_model_dir(tmp_path, onnx=True)
    backend = create_backend(Settings(model_dir=tmp_path), manifest)
    backend.close()
    assert backend.name == "onnxruntime"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_explicit_tensorrt_without_tensorrt_is_unavailable(tmp_path):
    manifest = write_model_dir(tmp_path)
    with pytest.raises(BackendUnavailable, match="tensorrt is not installed"):
        create_backend(Settings(model_dir=tmp_path, backend="tensorrt"), manifest)


def test_torch_backend_needs_a_checkpoint_and_a_gpu(tmp_path):
    manifest = write_model_dir(tmp_path)
    with pytest.raises(ManifestError, match="'checkpoint'"):
        create_backend(Settings(model_dir=tmp_path, backend="torch"), manifest)
    try:
        import torch
    except ImportError:
        pass
    else:
        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present")
    with pytest.raises(BackendUnavailable):
        create_backend(Settings(model_dir=tmp_path, backend="torch", checkpoint=tmp_path / "x.pt"), manifest)


def test_cuda_device_without_a_gpu_provider_is_unavailable(tmp_path):
    pytest.importorskip("onnx")
    import onnxruntime

    if any(p in onnxruntime.get_available_providers() for p in (CUDA, TENSORRT)):
        pytest.skip("this onnxruntime has GPU providers")
    manifest = write_model_dir(tmp_path, onnx=True)
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        create_backend(Settings(model_dir=tmp_path, backend="onnxruntime", device="cuda"), manifest)


def test_an_artifact_that_does_not_match_the_manifest_is_refused(tmp_path):
    pytest.importorskip("onnx")
    manifest = write_model_dir(tmp_path, onnx=True)
    with open(tmp_path / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="bytes"):
        create_backend(Settings(model_dir=tmp_path, backend="onnxruntime"), manifest)
    data = (tmp_path / "model.onnx").read_bytes()[:-1]
    (tmp_path / "model.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other content
    with pytest.raises(ManifestError, match="sha256"):
        create_backend(Settings(model_dir=tmp_path, backend="onnxruntime"), manifest)


def test_providers_requested():
    kwargs = {"input_name": "images", "input_size": 64, "max_batch": 8, "cache_dir": None}
    assert requested_providers("cpu", [TENSORRT, CUDA, CPU], **kwargs) == [CPU]
    assert requested_providers("auto", [CPU], **kwargs) == [CPU]
    with pytest.raises(BackendUnavailable):
        requested_providers("cuda", [CPU], **kwargs)
    providers = requested_providers("cuda:1", [TENSORRT, CUDA, CPU], **kwargs)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [TENSORRT, CUDA, CPU]
    trt_options, cuda_options = providers[0][1], providers[1][1]
    assert cuda_options == {"device_id": 1}
    assert trt_options["trt_profile_max_shapes"] == "images:8x3x64x64"
    assert trt_options["trt_profile_min_shapes"] == "images:1x3x64x64"
    assert not [key for key in trt_options if "fp16" in key]  # the FP16 export is FP16 already


@pytest.mark.parametrize(
    ("backend_kwargs", "max_batch", "problem"),
    [
        ({"input_size": 32}, 4, "input shape"),
        ({"output_shape": (TOP_K + 1, 6)}, 4, "output shape"),
        ({"output_shape": (TOP_K, 6, 1)}, 4, "output shape"),
        ({}, 8, "manifest max_batch"),
        ({"max_batch_size": 2}, 4, "allows (2)"),
        ({"head": "raw", "output_shape": (None, 9)}, 4, "output shape"),  # 5 + nc is 8
    ],
)
def test_check_backend_refuses_what_does_not_fit(tmp_path, backend_kwargs, max_batch, problem):
    manifest = write_model_dir(tmp_path)
    options = {"input_size": 64, "output_shape": (TOP_K, 6), "max_batch_size": 8, **backend_kwargs}
    backend = FakeBackend(zeros_fn, **options)
    with pytest.raises(BackendMismatch, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_backend(backend, manifest, max_batch)


def test_check_backend_accepts_a_raw_backend_for_a_topk_model(tmp_path):
    """The torch backend runs the net without the exported top-K head: raw rows of 5 + nc."""
    manifest = write_model_dir(tmp_path)
    check_backend(FakeBackend(zeros_fn, input_size=64, output_shape=(None, 8), head="raw"), manifest, 4)


def test_a_closed_backend_refuses_to_infer():
    backend = fake(lambda b: np.zeros((len(b), TOP_K, 6), np.float32))
    assert backend.close() and backend.close()  # idempotent
    with pytest.raises(BackendClosed, match="closed"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))
    assert backend.batch_sizes == []


def test_close_waits_for_the_running_infer_and_never_releases_under_it():
    inside, release = threading.Event(), threading.Event()
    events: list[str] = []

    def blocking(batch):
        inside.set()
        assert release.wait(5)
        events.append("infer returned")
        return np.zeros((len(batch), TOP_K, 6), np.float32)

    class Recording(FakeBackend):
        def _release(self) -> None:
            events.append("released")

    backend = Recording(blocking, input_size=64, output_shape=(TOP_K, 6))
    worker = threading.Thread(target=backend.infer, args=(np.zeros((1, 3, 64, 64), np.float32),))
    worker.start()
    assert inside.wait(5)
    assert backend.close(timeout_s=0.05) is False  # still inside: nothing released
    assert events == [] and not backend.closed
    closer = threading.Thread(target=backend.close)
    closer.start()
    release.set()
    worker.join(5)
    closer.join(5)
    assert events == ["infer returned", "released"] and backend.closed


@pytest.mark.parametrize("concurrency", [1, 2])
def test_at_most_concurrency_calls_run_at_once_and_close_waits_for_all(concurrency):
    lock, inside, most = threading.Lock(), [0], [0]
    release = threading.Event()
    events: list[str] = []

    def blocking(batch):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        assert release.wait(5)
        with lock:
            inside[0] -= 1
            events.append("infer returned")
        return np.zeros((len(batch), TOP_K, 6), np.float32)

    class Recording(FakeBackend):
        def _release(self) -> None:
            events.append("released")

    backend = Recording(blocking, input_size=64, output_shape=(TOP_K, 6), concurrency=concurrency)
    callers = [
        threading.Thread(target=backend.infer, args=(np.zeros((1, 3, 64, 64), np.float32),)) for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    time.sleep(0.1)
    assert most[0] == concurrency  # the third caller (and the second, at 1) waits for a slot
    assert backend.close(timeout_s=0.05) is False and events == []
    release.set()
    for caller in callers:
        caller.join(5)
    assert backend.close(timeout_s=5) is True
    assert events == ["infer returned"] * 3 + ["released"] and most[0] == concurrency


def test_the_onnxruntime_backend_runs_concurrent_calls_on_the_cpu(tmp_path):
    pytest.importorskip("onnx")
    manifest = write_model_dir(tmp_path, onnx=True)
    settings = Settings(model_dir=tmp_path, device="cpu", onnx_parallel_runs=2, onnx_intra_op_threads=1)
    backend = create_backend(settings, manifest)
    batches = [np.random.default_rng(i).random((2, 3, 64, 64), dtype=np.float32) for i in range(8)]
    try:
        with ThreadPoolExecutor(2) as pool:
            outputs = list(pool.map(backend.infer, batches))
    finally:
        backend.close()
    assert (
        backend.concurrency == 2
        and backend.device == "CPUExecutionProvider (2 concurrent runs x 1 intra-op thread)"
    )
    for batch, out in zip(batches, outputs, strict=True):
        np.testing.assert_allclose(out, tiny_reference(batch), atol=1e-6)


def test_the_onnxruntime_backend_refuses_to_infer_after_close(tmp_path):
    pytest.importorskip("onnx")
    manifest = write_model_dir(tmp_path, onnx=True)
    backend = create_backend(Settings(model_dir=tmp_path, backend="onnxruntime", device="cpu"), manifest)
    backend.close()
    with pytest.raises(BackendClosed):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))


@pytest.mark.parametrize(("device", "index"), [("cuda:3", 3), ("cuda", 0)])
def test_every_gpu_provider_gets_the_device_index(device, index):
    (trt_provider, cuda_provider, _) = requested_providers(
        device, [TENSORRT, CUDA, CPU], input_name="images", input_size=64, max_batch=8, cache_dir=None,
    )  # fmt: skip
    assert trt_provider[1]["device_id"] == cuda_provider[1]["device_id"] == index == device_index(device)


def test_the_fp16_artifact_is_chosen_only_when_wanted_and_exported_and_int8_only_when_asked(tmp_path):
    manifest = write_model_dir(tmp_path)
    with_fp16 = {**manifest.artifacts, "onnx_fp16": manifest.artifacts["onnx"]}
    assert onnx_key(manifest.artifacts, "fp16") == "onnx"
    assert onnx_key(with_fp16, "fp16") == "onnx_fp16"
    assert onnx_key(with_fp16, "fp32") == "onnx"
    with_int8 = {**with_fp16, "onnx_int8": manifest.artifacts["onnx"]}
    assert onnx_key(with_int8, "fp32") == "onnx" and onnx_key(with_int8, "fp16") == "onnx_fp16"
    assert onnx_key(with_int8, "int8") == "onnx_int8"  # no fallback: asked for, it must be there
    assert onnx_key(manifest.artifacts, "int8", tensorrt=True) == "onnx_int8_tensorrt"


def test_effective_max_batch_prefers_the_setting_else_what_manifest_and_backend_allow(tmp_path):
    manifest = write_model_dir(tmp_path)
    small = fake(lambda b: b, max_batch_size=MAX_BATCH - 1)
    assert effective_max_batch(Settings(model_dir=tmp_path), manifest) == MAX_BATCH
    assert effective_max_batch(Settings(model_dir=tmp_path), manifest, small) == MAX_BATCH - 1
    assert effective_max_batch(Settings(model_dir=tmp_path, max_batch_size=2), manifest, small) == 2


@pytest.mark.parametrize("content", [b"not an onnx file", b""])
def test_an_unreadable_onnx_file_is_a_backend_error(tmp_path, content):
    from service.backends.onnx_runtime import OnnxRuntimeBackend

    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(BackendError, match="could not load"):
        OnnxRuntimeBackend(path, head="topk", max_batch_size=1, profile=("images", 64))


def test_int8_is_refused_clearly_without_its_artifact(tmp_path):
    manifest = write_model_dir(tmp_path, onnx=True)
    with pytest.raises(BackendUnavailable, match="onnx_int8_tensorrt"):  # before TensorRT is looked for
        create_backend(Settings(model_dir=tmp_path, backend="tensorrt", precision="int8"), manifest)
    with pytest.raises(ManifestError, match="--int8 --calib IMAGES`"):
        create_backend(Settings(model_dir=tmp_path, device="cpu", precision="int8"), manifest)
    auto = create_backend(Settings(model_dir=tmp_path, device="cpu"), manifest)
    assert auto.precision == "fp32"
    auto.close()
