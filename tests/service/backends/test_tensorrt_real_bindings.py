"""The TensorRT and CUDA code held to the real Python bindings, without TensorRT's libraries or a GPU.

TensorRT: the real `tensorrt-cu13-bindings` wheels of TensorRT 10 and 11 are imported over stand-in
libraries (tests/support/tensorrt_api.py). Every class, method, property and enum member of the fake
TensorRT that the tests run the code against must exist there with the same parameter names, so the
code can use no name that TensorRT lacks. The code's TensorRT logger and tensor-type check then run
against the real module.

CUDA: the real cuda-bindings (a dev dependency) import without a driver; its calls answer with the
same `(error, *values)` shapes as the fake CUDA runtime, and "no driver" becomes BackendUnavailable,
so `auto` goes on to ONNX Runtime.
"""

from __future__ import annotations

import inspect
import shutil

import pytest

from service.backends.base import BackendUnavailable
from service.backends.cudart import Cuda, import_cudart
from tests.support.fake_cudart import FakeCudart
from tests.support.fake_tensorrt import CLASSES, ENUMS, ILogger
from tests.support.tensorrt_api import real_api

pytestmark = pytest.mark.unit

VERSIONS = ["10.16.1.11", "11.4.0.106"]  # the newest TensorRT 10 and 11 wheels for CUDA 13
CONSTRUCTED = {"ILogger", "Builder", "OnnxParser", "Runtime"}  # the classes our code instantiates

needs_tools = pytest.mark.skipif(
    not (shutil.which("gcc") and shutil.which("readelf")), reason="needs gcc and readelf (binutils)"
)


@pytest.fixture(scope="module", params=VERSIONS)
def real(request):
    return real_api(request.param)


def fake_members(cls: type) -> dict[str, object]:
    """The public API a fake class offers: what the code under test may use."""
    members = {k: v for k, v in vars(cls).items() if not k.startswith("_")}
    if cls.__name__ in CONSTRUCTED:
        members["__init__"] = vars(cls)["__init__"]
    return members


def accepts(real: list[str], fake: list[str]) -> bool:
    """Whether a real signature (["a", "b="]: b has a default) takes the fake's parameters, by name."""
    names = [p.rstrip("=") for p in real]
    return names[: len(fake)] == fake and all(p.endswith("=") for p in real[len(fake) :])


@needs_tools
def test_every_name_the_fake_offers_exists_in_the_real_bindings(real):
    problems = []
    for cls in CLASSES:
        members = real["classes"].get(cls.__name__)
        if members is None:
            problems.append(f"tensorrt.{cls.__name__} does not exist")
            continue
        for name, value in fake_members(cls).items():
            where = f"tensorrt.{cls.__name__}.{name}"
            found = members.get(name)
            if found is None:
                problems.append(f"{where} does not exist")
            elif isinstance(value, property) and found["kind"] != "property":
                problems.append(f"{where} is a {found['kind']}, not a property")
            elif inspect.isfunction(value):
                params = [p for p in inspect.signature(value).parameters if p != "self"]
                if found["kind"] != "method" or not any(accepts(sig, params) for sig in found["signatures"]):
                    problems.append(f"{where}({', '.join(params)}) is not one of {found['signatures']}")
            elif isinstance(value, type) and hasattr(value, "__members__"):
                missing = set(value.__members__) - set(real["enums"].get(f"{cls.__name__}.{name}", []))
                problems += [f"{where}.{m} does not exist" for m in sorted(missing)]
    for enum in ENUMS:
        missing = set(enum.__members__) - set(real["enums"].get(enum.__name__, []))
        problems += [f"tensorrt.{enum.__name__}.{m} does not exist" for m in sorted(missing)]
    assert not problems, f"TensorRT {real['version']}:\n" + "\n".join(problems)


@needs_tools
def test_the_check_catches_a_name_tensorrt_lacks(real):
    """The check above can fail: a method of TensorRT 8 that 10 removed, and a renamed parameter."""
    assert "execute_async_v2" not in real["classes"]["IExecutionContext"]
    (timing,) = real["classes"]["IBuilderConfig"]["set_timing_cache"]["signatures"]
    assert accepts(timing, ["cache", "ignore_mismatch"]) and not accepts(timing, ["cache", "ignore"])
    assert not accepts(timing, ["cache"])  # ignore_mismatch has no default
    assert any(
        accepts(s, []) for s in real["classes"]["ICudaEngine"]["create_execution_context"]["signatures"]
    )


PROBE = """
import logging, sys
import numpy as np
from service.backends.base import BackendUnavailable
from service.backends.tensorrt_build import tensorrt_logger
from service.backends.tensorrt_runtime import _io_dtype

logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format="%(levelname)s %(message)s")
logger = tensorrt_logger(trt)
assert tensorrt_logger(trt) is logger and isinstance(logger, trt.ILogger)
for severity in trt.ILogger.Severity.__members__.values():
    logger.log(severity, f"message {severity.name}")

class Engine:
    def get_tensor_dtype(self, name):
        return getattr(trt.DataType, name)

for name in trt.DataType.__members__:
    try:
        print("dtype", name, np.dtype(_io_dtype(trt, Engine(), name)).name)
    except BackendUnavailable:
        print("dtype", name, "unavailable")
"""


@needs_tools
@pytest.mark.parametrize("version", VERSIONS)
def test_the_logger_and_the_tensor_types_work_with_the_real_module(version):
    lines = real_api(version, probe=PROBE)["probe"]
    assert lines[:5] == [
        "CRITICAL TensorRT: message INTERNAL_ERROR",
        "ERROR TensorRT: message ERROR",
        "WARNING TensorRT: message WARNING",
        "INFO TensorRT: message INFO",
        "DEBUG TensorRT: message VERBOSE",
    ]
    types = dict(line.split()[1:] for line in lines if line.startswith("dtype "))
    assert types.pop("FLOAT") == "float32" and types.pop("HALF") == "float16"
    assert types and set(types.values()) == {"unavailable"}  # INT8, BF16, FP8, ... : refused, not cast


def test_the_fake_logger_mirrors_the_real_severities(real):
    assert list(ILogger.Severity.__members__) == real["enums"]["ILogger.Severity"]


# ------------------------------------------------------------------------------------- cuda-bindings
@pytest.fixture
def cudart():
    runtime = import_cudart()
    if int(runtime.cudaGetDeviceCount()[0]) == 0:
        pytest.skip("a CUDA driver and GPU are here: the no-driver answers cannot be checked")
    return runtime


def test_the_real_cuda_bindings_import_without_a_driver():
    runtime = import_cudart()
    assert runtime.__name__ == "cuda.bindings.runtime"


def test_no_driver_makes_the_backend_unavailable(cudart):
    with pytest.raises(BackendUnavailable, match=r"cudaSetDevice failed: cudaError\w+ \(.+\)"):
        Cuda(cudart).set_device(0)
    with pytest.raises(BackendUnavailable):
        Cuda(cudart).identity(0)


def test_the_fake_runtime_answers_in_the_real_shapes(cudart):
    """(error, *values) of the same length for each call the code and the fake engine make."""
    fake = FakeCudart()
    stream = fake.cudaStreamCreate()[1]
    h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    calls = {
        "cudaSetDevice": (0,),
        "cudaGetDevice": (),
        "cudaGetDeviceCount": (),
        "cudaGetDeviceProperties": (0,),
        "cudaMallocHost": (64,),
        "cudaMalloc": (64,),
        "cudaFreeHost": (0,),
        "cudaFree": (0,),
        "cudaStreamCreate": (),
        "cudaStreamDestroy": (0,),
        "cudaStreamSynchronize": (0,),
        "cudaMemcpyAsync": (0, 0, 0, h2d, 0),
        "cudaMemcpy": (0, 0, 0, h2d),
        "cudaGetErrorString": (cudart.cudaError_t.cudaSuccess,),
    }
    for name, args in calls.items():
        real_answer = getattr(cudart, name)(*args)
        fake_args = tuple(
            stream if a == 0 and "Stream" in name and name != "cudaStreamCreate" else a for a in args
        )
        fake_answer = getattr(fake, name)(*fake_args)
        assert len(real_answer) == len(fake_answer), name
        assert isinstance(real_answer[0], cudart.cudaError_t), name
    names = {e.name for e in FakeCudart.cudaError_t}
    assert names <= set(cudart.cudaError_t.__members__)  # the fake's errors have real names ...
    assert all(
        int(getattr(cudart.cudaError_t, n)) == int(FakeCudart.cudaError_t[n]) for n in names
    )  # ... numbers
