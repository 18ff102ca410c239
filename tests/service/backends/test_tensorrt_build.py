"""The TensorRT engine builder: option checks, profile shapes, timing cache paths, availability,
builds against the fake TensorRT (tests/support/fake_tensorrt.py).

Everything except the `gpu` tests runs without TensorRT; those build a real engine from a tiny ONNX
graph and are skipped where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from service.backends import tensorrt_build as tb
from service.backends.base import BackendUnavailable
from service.backends.cudart import Cuda, import_cudart
from service.backends.engine_cache import engine_matches
from service.backends.tensorrt_build import EngineOptions, TensorRTUnavailable
from tests.support.fake_cudart import FakeCudart
from tests.support.fake_tensorrt import install_fakes

pytestmark = pytest.mark.export

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


# --- options and profile -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "chw", "expected"),
    [
        (EngineOptions(), (3, 640, 640), ((1, 3, 640, 640), (8, 3, 640, 640), (16, 3, 640, 640))),
        (EngineOptions(max_batch=1), (3, 32, 32), ((1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32))),
        (
            EngineOptions(max_batch=5),
            (3, 1280, 1280),
            ((1, 3, 1280, 1280), (2, 3, 1280, 1280), (5, 3, 1280, 1280)),
        ),
        (
            EngineOptions(max_batch=4, opt_batch=4),
            (3, 32, 64),
            ((1, 3, 32, 64), (4, 3, 32, 64), (4, 3, 32, 64)),
        ),
        (
            EngineOptions(max_batch=32, opt_batch=1),
            (1, 8, 16),
            ((1, 1, 8, 16), (1, 1, 8, 16), (32, 1, 8, 16)),
        ),
    ],
)
def test_profile_shapes(options, chw, expected):
    assert tb.profile_shapes(chw, options) == expected


@pytest.mark.parametrize("chw", [(0, 32, 32), (3, -1, 32), (3, 32, 0)])
def test_profile_shapes_rejects_non_positive_chw(chw):
    with pytest.raises(ValueError, match="positive"):
        tb.profile_shapes(chw, EngineOptions())


def test_engine_options_defaults():
    options = EngineOptions()
    assert (options.max_batch, options.opt_batch, options.workspace_mb, options.timing_cache) == (
        16,
        8,
        4096,
        None,
    )
    assert EngineOptions(max_batch=16) == EngineOptions(max_batch=16, opt_batch=8)
    assert EngineOptions(timing_cache="x/t.cache").timing_cache == Path("x/t.cache")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_batch = 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": -3}, "max_batch"),
        ({"max_batch": 4, "opt_batch": 0}, "opt_batch"),
        ({"max_batch": 4, "opt_batch": 5}, "opt_batch"),
        ({"workspace_mb": 0}, "workspace_mb"),
        ({"workspace_mb": -1}, "workspace_mb"),
    ],
)
def test_engine_options_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineOptions(**kwargs)


# --- timing cache path ---------------------------------------------------------------------------


def test_timing_cache_path_name_and_determinism(tmp_path):
    path = tb.default_timing_cache_path("10.13.0", "NVIDIA H200", "9.0", cache_dir=tmp_path)
    assert path == tmp_path / "timing-10.13.0-NVIDIA_H200-sm90.cache"
    assert path == tb.default_timing_cache_path("10.13.0", "NVIDIA H200", "9.0", cache_dir=tmp_path)


def test_timing_cache_path_differs_by_version_and_gpu(tmp_path):
    base = ("10.13.0", "NVIDIA H200", "9.0")
    variants = [
        base,
        ("10.13.2", *base[1:]),
        ("11.0.0", *base[1:]),
        (base[0], "NVIDIA H100 80GB HBM3", "9.0"),
        (base[0], "NVIDIA A100-SXM4-80GB", "8.0"),
        (base[0], "NVIDIA H200", "8.9"),
    ]
    paths = {tb.default_timing_cache_path(*v, cache_dir=tmp_path) for v in variants}
    assert len(paths) == len(variants)


@pytest.mark.parametrize(
    ("version", "gpu"),
    [("10.13.0", "NVIDIA GeForce RTX 4090/Ti: *?"), ("../../etc", "..\\x"), ("10.0", " Tesla\tT4 é ")],
)
def test_timing_cache_path_is_filesystem_safe(tmp_path, version, gpu):
    path = tb.default_timing_cache_path(version, gpu, "7.5", cache_dir=tmp_path)
    assert path.parent == tmp_path
    assert SAFE_NAME.fullmatch(path.name), path.name
    assert path.name.startswith("timing-") and path.name.endswith("-sm75.cache")


def test_timing_cache_path_honours_yolor_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOR_CACHE_DIR", str(tmp_path / "cache"))
    path = tb.default_timing_cache_path("10.13.0", "NVIDIA H200", "9.0")
    assert path.parent == tmp_path / "cache" / "tensorrt"


def test_timing_cache_path_defaults_to_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("YOLOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tb.default_timing_cache_path("10.13.0", "NVIDIA H200", "9.0")
    assert path.parent == tmp_path / ".cache" / "yolor" / "tensorrt"


@pytest.mark.parametrize("cap", ["9", "sm90", "9.0.1", "", "[N/A]"])
def test_timing_cache_path_rejects_bad_compute_capability(tmp_path, cap):
    with pytest.raises(ValueError, match="compute capability"):
        tb.default_timing_cache_path("10.13.0", "NVIDIA H200", cap, cache_dir=tmp_path)


# --- availability --------------------------------------------------------------------------------


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not read before TensorRT is found")
    return path


def test_build_engine_without_tensorrt(monkeypatch, tmp_path, onnx_file):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt now raises ImportError
    assert tb.tensorrt_version() is None
    with pytest.raises(TensorRTUnavailable) as info:
        tb.build_engine(onnx_file, tmp_path / "m.engine", EngineOptions(), onnx_sha256="a", precision="fp32")
    assert str(info.value) == (
        "TensorRT is not installed in this environment (pip install tensorrt-cu13 cuda-python "
        "--extra-index-url https://pypi.nvidia.com; needs an NVIDIA GPU and driver); "
        "ONNX artifacts are unaffected"
    )
    with pytest.raises(TensorRTUnavailable, match="not installed"):
        tb.require_tensorrt()
    assert not (tmp_path / "m.engine").exists()


def _stub_tensorrt(monkeypatch, version: str) -> None:
    """A module that only has a version: enough for the checks that run before any TensorRT call."""
    stub = types.ModuleType("tensorrt")
    stub.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", stub)


def test_build_engine_without_gpu(monkeypatch, tmp_path, onnx_file):
    _stub_tensorrt(monkeypatch, "10.13.0")
    monkeypatch.setattr(tb, "import_cudart", lambda: FakeCudart(gpus=[]))  # no driver
    assert tb.tensorrt_version() == "10.13.0"
    with pytest.raises(TensorRTUnavailable, match=r"cuda:0 cannot be used.*InsufficientDriver") as info:
        tb.build_engine(onnx_file, tmp_path / "m.engine", EngineOptions(), onnx_sha256="a", precision="fp32")
    assert "not installed" not in str(info.value)


def test_build_engine_without_cuda_python(monkeypatch, tmp_path, onnx_file):
    """Export's early check (`require_tensorrt`) fails before any work, not after the ONNX export."""
    _stub_tensorrt(monkeypatch, "11.4.0")

    def missing():
        raise BackendUnavailable("TensorRT needs cuda-python (pip install cuda-python): no module 'cuda'")

    monkeypatch.setattr(tb, "import_cudart", missing)
    with pytest.raises(TensorRTUnavailable, match="needs cuda-python"):
        tb.require_tensorrt()


def test_build_engine_refuses_tensorrt_before_10(monkeypatch, tmp_path, onnx_file):
    _stub_tensorrt(monkeypatch, "8.6.1")
    monkeypatch.setattr(tb, "import_cudart", FakeCudart)
    with pytest.raises(TensorRTUnavailable, match=r"8\.6\.1 is too old"):
        tb.build_engine(onnx_file, tmp_path / "m.engine", EngineOptions(), onnx_sha256="a", precision="fp32")


def test_build_engine_checks_arguments_first(tmp_path, onnx_file):
    with pytest.raises(ValueError, match="precision"):
        tb.build_engine(onnx_file, tmp_path / "m.engine", EngineOptions(), onnx_sha256="a", precision="bf16")
    with pytest.raises(FileNotFoundError):
        tb.build_engine(
            tmp_path / "missing.onnx",
            tmp_path / "m.engine",
            EngineOptions(),
            onnx_sha256="a",
            precision="fp32",
        )


# --- builds: against the fake TensorRT, and (gpu) the real one -----------------------------------


def _gpu_identity() -> tuple[str, str] | None:
    try:
        return Cuda(import_cudart()).identity(0)
    except BackendUnavailable:
        return None


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.gpu)])
def trt(request, monkeypatch):
    """The fake TensorRT over a fake CUDA runtime, and (marked gpu) the real ones where present."""
    if request.param == "fake":
        return install_fakes(monkeypatch, FakeCudart())
    module = pytest.importorskip("tensorrt")
    if _gpu_identity() is None:
        pytest.skip("no CUDA GPU visible")
    return module


def _conv_onnx(path: Path, batch: int | str = "batch", dtype=np.float32) -> Path:
    """images [batch, 3, 32, 32] -> 1x1 Conv (identity weights) -> output."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    weight = numpy_helper.from_array(np.eye(3, dtype=dtype).reshape(3, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("images", elem, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("output", elem, [batch, 3, 32, 32])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # accepted by every TensorRT 10 parser
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(("dtype", "precision"), [(np.float32, "fp32"), (np.float16, "fp16")])
def test_build_engine(trt, tmp_path, dtype, precision):
    onnx_path = _conv_onnx(tmp_path / "tiny.onnx", dtype=dtype)
    engine_path = tmp_path / "out" / "tiny.engine"
    cache = tmp_path / "cache" / "timing.cache"
    options = EngineOptions(max_batch=4, workspace_mb=256, timing_cache=cache)
    manifest = tb.build_engine(onnx_path, engine_path, options, onnx_sha256="f" * 64, precision=precision)

    data = engine_path.read_bytes()
    assert manifest["engine_sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["profile"] == {
        "input": "images",
        "min": [1, 3, 32, 32],
        "opt": [2, 3, 32, 32],
        "max": [4, 3, 32, 32],
    }
    assert manifest["tensorrt_version"] == trt.__version__ == tb.tensorrt_version()
    assert (manifest["gpu_name"], manifest["compute_capability"]) == Cuda(tb.import_cudart()).identity(0)
    assert manifest["timing_cache"] == str(cache) and cache.stat().st_size > 0
    assert os.listdir(engine_path.parent) == [engine_path.name]  # no temp file left behind
    identity = ("onnx_sha256", "tensorrt_version", "gpu_name", "compute_capability")
    assert engine_matches(manifest, **{k: manifest[k] for k in identity}, max_batch=4)[0]

    engine = trt.Runtime(tb.tensorrt_logger(trt)).deserialize_cuda_engine(data)
    assert engine is not None
    assert [tuple(s) for s in engine.get_tensor_profile_shape("images", 0)] == [
        (1, 3, 32, 32),
        (2, 3, 32, 32),
        (4, 3, 32, 32),
    ]
    want = trt.DataType.HALF if precision == "fp16" else trt.DataType.FLOAT
    assert engine.get_tensor_dtype("images") == want  # strongly typed: precision comes from the ONNX

    again = tb.build_engine(onnx_path, engine_path, options, onnx_sha256="f" * 64, precision=precision)
    assert again["timing_cache"] == manifest["timing_cache"]  # the cache written above is reused


def test_build_engine_refuses_a_fixed_batch(trt, tmp_path):
    onnx_path = _conv_onnx(tmp_path / "fixed.onnx", batch=1)
    with pytest.raises(ValueError, match="fixed batch size 1"):
        tb.build_engine(onnx_path, tmp_path / "x.engine", EngineOptions(), onnx_sha256="f", precision="fp32")
    assert not (tmp_path / "x.engine").exists()


def test_build_engine_reports_parser_errors(trt, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(RuntimeError, match="could not parse") as info:
        tb.build_engine(
            bad,
            tmp_path / "x.engine",
            EngineOptions(timing_cache=tmp_path / "t"),
            onnx_sha256="f",
            precision="fp32",
        )
    assert len(str(info.value).splitlines()) >= 2  # the parser's own errors follow the headline
