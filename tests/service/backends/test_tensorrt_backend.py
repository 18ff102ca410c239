"""TensorRTBackend and engine loading end to end, against a fake TensorRT and a fake CUDA runtime.

The fake engine runs the ONNX graph it was built from (tests/support/fake_tensorrt.py), so an
identity graph makes an "echo" engine and the tiny model's graph gives outputs to compare with its
numpy reference. What is checked: FLOAT and HALF I/O, the copy out of the pinned buffer, everything
freed after a failed start and at close, profile refusals, the device index from the builder to the
last free, the cheap checks before a build, engine reuse only for the file its manifest describes,
one build among concurrent loaders, and TensorRT's messages in Python logging. The names of the fake
TensorRT are checked against the real bindings in test_tensorrt_real_bindings.py.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.backends import BackendError, BackendUnavailable, engine_cache, tensorrt_runtime
from service.backends import tensorrt_build as builder
from service.backends.factory import create_backend, load_checked_backend
from service.backends.tensorrt_runtime import TensorRTBackend
from service.manifest import ModelManifest
from service.settings import Settings
from tests.support.fake_cudart import FakeCudart, Gpu
from tests.support.fake_tensorrt import install_fakes
from tests.support.model_files import tiny_reference, write_model_dir

pytestmark = pytest.mark.unit

ECHO_IN, ECHO_OUT = (3, 32, 32), (384, 8)  # 3072 values per image either way
NOTHING_LIVE = {"host": 0, "device": 0, "streams": 0}


install = install_fakes


@pytest.fixture
def cudart():
    return FakeCudart()


@pytest.fixture
def trt(monkeypatch, cudart):
    return install(monkeypatch, cudart)


def echo_onnx(path: Path, dtype=np.float32, scale: float = 1.0) -> Path:
    """images [batch, *ECHO_IN] -> output [batch, *ECHO_OUT]: the same values (times `scale`), reshaped."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["images", "shape"], ["flat"]),
            helper.make_node("Mul", ["flat", "scale"], ["output"]),
        ],
        "echo",
        [helper.make_tensor_value_info("images", elem, ["batch", *ECHO_IN])],
        [helper.make_tensor_value_info("output", elem, ["batch", *ECHO_OUT])],
        initializer=[
            numpy_helper.from_array(np.array([-1, *ECHO_OUT], np.int64), "shape"),
            numpy_helper.from_array(np.array([scale], dtype), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    checker.check_model(model)
    save(model, str(path))
    return path


def build_echo(tmp_path: Path, dtype=np.float32, max_batch: int = 4) -> Path:
    onnx_path = echo_onnx(tmp_path / "echo.onnx", dtype)
    engine = tmp_path / "echo.engine"
    precision = "fp16" if dtype == np.float16 else "fp32"
    builder.build_engine(
        onnx_path,
        engine,
        builder.EngineOptions(max_batch=max_batch),
        onnx_sha256="0" * 64,
        precision=precision,
    )
    return engine


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *ECHO_IN), dtype=np.float32)


# ------------------------------------------------------------------------------------------ backend
def round_trips(backend: TensorRTBackend, dtype) -> None:
    """Batches of every size come back as sent (HALF rounds once), each answer the caller's own."""
    assert (backend.max_batch_size, backend.input_shape, backend.output_shape) == (4, ECHO_IN, ECHO_OUT)
    results = []
    with ThreadPoolExecutor(1) as worker:  # as the batcher: not the thread that loaded the engine
        for n in (1, 2, 3, 4, 1):
            images = batch(n, seed=n)
            out = worker.submit(backend.infer, images).result()
            expected = images.astype(dtype).astype(np.float32).reshape(n, *ECHO_OUT)
            assert out.dtype == np.float32 and np.array_equal(out, expected)
            results.append((out, expected))
    for out, expected in results:  # later batches did not overwrite earlier answers
        assert np.array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["FLOAT", "HALF"])
def test_echo_engine_round_trips_every_batch_size(trt, cudart, tmp_path, dtype):
    backend = TensorRTBackend(build_echo(tmp_path, dtype), head="raw", precision="fp32", device_index=0)
    round_trips(backend, dtype)
    assert trt.state.executions == 5
    backend.close()
    assert cudart.live() == NOTHING_LIVE


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["FLOAT", "HALF"])
def test_echo_engine_with_the_real_cuda_runtime_on_a_gpu(monkeypatch, tmp_path, dtype):
    """The backend's CUDA code for real (pinned and device memory, the stream's copies, the frees),
    around the fake echo engine: no TensorRT is needed, a GPU is."""
    from service.backends.cudart import import_cudart

    try:
        real = import_cudart()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    err, count = real.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        pytest.skip("no CUDA GPU visible")
    trt = install(monkeypatch, real)
    backend = TensorRTBackend(build_echo(tmp_path, dtype), head="raw", precision="fp32", device_index=0)
    round_trips(backend, dtype)
    assert trt.state.executions == 5
    closer = threading.Thread(target=backend.close)  # frees from another thread, as a reload does
    closer.start()
    closer.join()
    assert backend.closed


@pytest.mark.parametrize(("tensor", "dtype"), [("images", "BF16"), ("output", "INT8"), ("images", "FP8")])
def test_io_types_it_cannot_feed_are_unavailable_and_leak_nothing(trt, cudart, tmp_path, tensor, dtype):
    trt.state.override_dtypes = {tensor: dtype}
    engine = build_echo(tmp_path)
    with pytest.raises(BackendUnavailable, match=f"{tensor}.*only FLOAT and HALF"):
        TensorRTBackend(engine, head="raw", precision="fp32")
    assert cudart.live() == NOTHING_LIVE


@pytest.mark.parametrize(
    "fail_on",
    [
        {"cudaStreamCreate": 1},
        {"cudaMallocHost": 1},
        {"cudaMallocHost": 2},
        {"cudaMalloc": 1},
        {"cudaMalloc": 2},
    ],
)
def test_a_failed_start_frees_what_it_had_allocated(trt, cudart, tmp_path, fail_on):
    engine = build_echo(tmp_path)
    cudart.fail_on = fail_on
    with pytest.raises(BackendError, match="cudaErrorMemoryAllocation"):
        TensorRTBackend(engine, head="raw", precision="fp32")
    assert cudart.live() == NOTHING_LIVE


def test_a_shape_the_profile_refuses_is_an_error(trt, cudart, tmp_path):
    engine = build_echo(tmp_path)
    backend = TensorRTBackend(engine, head="raw", precision="fp32")
    backend._context.engine.profile = ((2, *ECHO_IN), (2, *ECHO_IN), (4, *ECHO_IN))  # batch 1 refused now
    with pytest.raises(BackendError, match=r"refused input shape \(1, 3, 32, 32\)"):
        backend.infer(batch(1))
    assert backend.infer(batch(2)).shape == (2, *ECHO_OUT)
    backend.close()


def test_an_engine_that_does_not_deserialize_is_an_error_and_frees_nothing_twice(trt, cudart, tmp_path):
    (tmp_path / "bad.engine").write_bytes(b"not an engine")
    with pytest.raises(BackendError, match="could not deserialize"):
        TensorRTBackend(tmp_path / "bad.engine", head="raw", precision="fp32")
    assert cudart.live() == NOTHING_LIVE


def test_no_driver_is_unavailable(monkeypatch, tmp_path):
    cudart = FakeCudart(gpus=[])
    install(monkeypatch, cudart)
    with pytest.raises(BackendUnavailable, match="cudaErrorInsufficientDriver"):
        TensorRTBackend(tmp_path / "any.engine", head="raw", precision="fp32")


# ---------------------------------------------------------------------------------- loading/building
def echo_model_dir(directory: Path, scale: float = 1.0, max_batch: int = 4) -> ModelManifest:
    """A model directory whose model.onnx is the echo graph (a raw-head layout: 384 rows of 5 + 3)."""
    import hashlib

    from service.manifest import Artifact

    manifest = write_model_dir(
        directory, head="raw", raw_rows=ECHO_OUT[0], input_size=ECHO_IN[1], max_batch=max_batch
    )
    data = echo_onnx(directory / "model.onnx", scale=scale).read_bytes()
    artifact = Artifact(
        file="model.onnx", sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), precision="fp32"
    )
    manifest = manifest.model_copy(update={"artifacts": {"onnx": artifact}})
    manifest.write(directory)
    return manifest


def load(options: Settings, manifest: ModelManifest) -> TensorRTBackend:
    """Through the factory, which turns the settings into load_tensorrt_backend's plain arguments."""
    backend = create_backend(options, manifest)
    assert isinstance(backend, TensorRTBackend)
    return backend


def settings(model_dir: Path, engine_dir: Path | None = None, device: str = "cuda") -> Settings:
    return Settings(model_dir=model_dir, engine_dir=engine_dir, backend="tensorrt", device=device)


def test_the_device_index_reaches_the_builder_the_manifest_and_every_thread(monkeypatch, tmp_path):
    cudart = FakeCudart(gpus=[Gpu("NVIDIA L4", (8, 9)), Gpu("NVIDIA H200", (9, 0))])
    trt = install(monkeypatch, cudart)
    monkeypatch.setenv("YOLOR_CACHE_DIR", str(tmp_path / "cache"))
    manifest = echo_model_dir(tmp_path / "model")

    backend = load(settings(tmp_path / "model", device="cuda:1"), manifest)
    assert trt.state.builder_devices == [1] and [b["device"] for b in trt.state.builds] == [1]
    meta = json.loads((tmp_path / "model" / "model.engine.json").read_text())
    assert (meta["gpu_name"], meta["compute_capability"]) == ("NVIDIA H200", "9.0")
    assert Path(meta["timing_cache"]).name == "timing-11.4.0.106-NVIDIA_H200-sm90.cache"
    assert Path(meta["timing_cache"]).is_file()
    assert backend.device.startswith("cuda:1 ")

    cudart.calls.clear()
    with ThreadPoolExecutor(1) as worker:  # the batcher's thread: never set a device before
        out = worker.submit(backend.infer, batch(2)).result()
    assert np.array_equal(out, batch(2).reshape(2, *ECHO_OUT))
    threading.Thread(target=backend.close).start()  # the event loop's thread, at a reload
    frees = [(name, device) for name, device in cudart.calls if name.startswith(("cudaFree", "cudaStream"))]
    memory = [
        (n, d) for n, d in cudart.calls if n.startswith(("cudaMemcpy", "cudaFree", "cudaStreamDestroy"))
    ]
    assert memory and all(device == 1 for _, device in memory), cudart.calls
    assert {name for name, _ in frees} >= {"cudaFree", "cudaFreeHost", "cudaStreamDestroy"}
    assert cudart.live() == NOTHING_LIVE


def test_an_engine_is_built_on_the_gpu_it_is_asked_for(monkeypatch, tmp_path):
    """`yolor export --engine` calls build_engine directly, from a thread that set no device."""
    cudart = FakeCudart(gpus=[Gpu("NVIDIA L4", (8, 9)), Gpu("NVIDIA H200", (9, 0))])
    trt = install(monkeypatch, cudart)
    onnx_path = echo_onnx(tmp_path / "echo.onnx")
    options = builder.EngineOptions(max_batch=2, timing_cache=tmp_path / "timing.cache")
    with ThreadPoolExecutor(1) as fresh:
        meta = fresh.submit(
            builder.build_engine, onnx_path, tmp_path / "e", options, onnx_sha256="0" * 64, precision="fp32",
            device_index=1,
        ).result()  # fmt: skip
    assert trt.state.builder_devices == [1]
    assert (meta["gpu_name"], meta["compute_capability"]) == ("NVIDIA H200", "9.0")
    with pytest.raises(builder.TensorRTUnavailable, match=r"cuda:2 cannot be used.*cudaErrorInvalidDevice"):
        builder.build_engine(
            onnx_path, tmp_path / "f", options, onnx_sha256="0" * 64, precision="fp32", device_index=2
        )


def test_an_engine_for_another_gpu_is_rebuilt_one_for_this_gpu_reused(monkeypatch, tmp_path):
    cudart = FakeCudart(gpus=[Gpu("NVIDIA L4", (8, 9)), Gpu("NVIDIA H200", (9, 0))])
    trt = install(monkeypatch, cudart)
    manifest = echo_model_dir(tmp_path / "model")
    for device, batch_limit, builds in (
        ("cuda:0", None, 1),
        ("cuda:0", None, 1),  # the cached engine matches: reused
        ("cuda:1", None, 2),  # another GPU model
        ("cuda:1", None, 2),
        ("cuda:1", 2, 2),  # the profile already covers batch 2
    ):
        options = settings(tmp_path / "model", device=device).model_copy(
            update={"max_batch_size": batch_limit}
        )
        load(options, manifest).close()
        assert len(trt.state.builds) == builds


def test_an_engine_the_export_built_is_reused_from_the_model_directory(trt, tmp_path):
    manifest = echo_model_dir(tmp_path / "model")
    load(settings(tmp_path / "model"), manifest).close()  # as export does
    assert (tmp_path / "model" / "model.engine").is_file() and len(trt.state.builds) == 1
    load(settings(tmp_path / "model", tmp_path / "cache"), manifest).close()
    assert len(trt.state.builds) == 1 and not (tmp_path / "cache").exists()


def test_without_a_gpu_tensorrt_is_unavailable_and_auto_serves_onnx_runtime(monkeypatch, tmp_path):
    trt = install(monkeypatch, FakeCudart(gpus=[]))  # TensorRT and cuda-python, but no driver
    manifest = write_model_dir(tmp_path / "model", onnx=True)
    with pytest.raises(BackendUnavailable, match=r"cuda:0 cannot be used.*cudaErrorInsufficientDriver"):
        create_backend(settings(tmp_path / "model"), manifest)
    auto = Settings(model_dir=tmp_path / "model", backend="auto", device="auto")
    backend = create_backend(auto, manifest)
    assert backend.name == "onnxruntime" and trt.state.builds == []
    images = np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(backend.infer(images), tiny_reference(images), rtol=1e-5, atol=1e-6)
    backend.close()


def test_without_cuda_python_nothing_is_built(trt, monkeypatch, tmp_path):
    def missing():
        raise BackendUnavailable(
            "TensorRT needs cuda-python (pip install cuda-python): No module named 'cuda'"
        )

    monkeypatch.setattr(tensorrt_runtime, "import_cudart", missing)
    manifest = echo_model_dir(tmp_path / "model")
    with pytest.raises(BackendUnavailable, match="cuda-python"):
        load(settings(tmp_path / "model"), manifest)
    assert trt.state.builds == []


@pytest.mark.parametrize("where", ["under-a-file", "/proc"])  # /proc: there, but not writable even by root
def test_an_engine_directory_that_cannot_be_written_is_refused_before_the_build(trt, tmp_path, where):
    manifest = echo_model_dir(tmp_path / "model")
    (tmp_path / "a-file").write_text("")
    engine_dir = tmp_path / "a-file" / "engines" if where == "under-a-file" else Path(where)
    with pytest.raises(BackendUnavailable, match="not writable"):
        load(settings(tmp_path / "model", engine_dir), manifest)
    assert trt.state.builds == []


def test_an_engine_is_reused_only_if_it_is_the_file_its_manifest_describes(trt, tmp_path):
    manifest = echo_model_dir(tmp_path / "model")
    load(settings(tmp_path / "model"), manifest).close()
    engine = tmp_path / "model" / "model.engine"
    engine.write_bytes(engine.read_bytes().replace(b'"output"', b'"outpuT"'))  # damaged, same size
    backend = load(settings(tmp_path / "model"), manifest)
    assert len(trt.state.builds) == 2
    assert np.array_equal(backend.infer(batch(1)), batch(1).reshape(1, *ECHO_OUT))
    backend.close()


def test_a_build_killed_before_its_manifest_leaves_no_wrong_pair(trt, monkeypatch, tmp_path):
    """Model A's engine is cached; model B's build into the same directory dies after writing its
    engine. Loading A again must not pair A's manifest with B's engine (B doubles its input)."""
    engines = tmp_path / "engines"
    a, b = echo_model_dir(tmp_path / "a"), echo_model_dir(tmp_path / "b", scale=2.0)
    load(settings(tmp_path / "a", engines), a).close()

    def killed(*args, **kwargs):
        raise SystemExit("killed")

    with monkeypatch.context() as m:
        m.setattr(engine_cache, "write_engine_manifest", killed)
        with pytest.raises(SystemExit):
            load(settings(tmp_path / "b", engines), b)
    assert not (engines / "model.engine.json").exists()

    backend = load(settings(tmp_path / "a", engines), a)
    assert len(trt.state.builds) == 3
    assert np.array_equal(backend.infer(batch(1)), batch(1).reshape(1, *ECHO_OUT))
    backend.close()


def test_concurrent_loaders_build_once(trt, tmp_path):
    """YOLOR_WORKERS > 1: every worker process starts at once; one builds, the others wait for it."""
    manifest = echo_model_dir(tmp_path / "model")
    trt.state.build_seconds = 0.3
    with ThreadPoolExecutor(3) as pool:  # flock locks per open file, so threads contend as processes do
        loads = [pool.submit(load, settings(tmp_path / "model"), manifest) for _ in range(3)]
        backends = [load.result() for load in loads]
    assert len(trt.state.builds) == 1
    for backend in backends:
        assert np.array_equal(backend.infer(batch(3)), batch(3).reshape(3, *ECHO_OUT))
        backend.close()


def test_tensorrt_speaks_through_logging_with_one_logger(trt, tmp_path, caplog, capsys):
    manifest = echo_model_dir(tmp_path / "model")
    with caplog.at_level(logging.INFO, logger="service.backends"):
        load(settings(tmp_path / "model"), manifest).close()
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TensorRT: ")]
    assert "TensorRT: built a fake engine" in messages  # the builder's
    assert "TensorRT: deserialized a fake engine" in messages  # the runtime's
    assert len({id(logger) for logger in trt.state.loggers}) == 1 and len(trt.state.loggers) == 2
    assert capsys.readouterr().out == ""


def test_the_factory_serves_the_tiny_model_through_tensorrt(trt, cudart, tmp_path):
    """create_backend -> build -> TensorRTBackend -> the manifest checks; outputs as the graph's."""
    manifest = write_model_dir(tmp_path / "model", onnx=True)
    backend, max_batch = load_checked_backend(settings(tmp_path / "model"), manifest, create_backend)
    assert (backend.name, max_batch) == ("tensorrt", manifest.max_batch)
    images = np.random.default_rng(1).random((3, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(backend.infer(images), tiny_reference(images), rtol=1e-6, atol=1e-6)
    backend.close()
    assert cudart.live() == NOTHING_LIVE
