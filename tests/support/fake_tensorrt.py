"""A TensorRT for tests: the part of the `tensorrt` Python API our builder and runtime use, with an
"engine" that runs the ONNX graph it was built from on the host, through ONNX Runtime.

`fake_tensorrt(cudart)` returns a module to put in `sys.modules["tensorrt"]`. Its engine is
strongly typed as our builder asks for: its I/O tensors have the ONNX graph's types (FLOAT or HALF).
`execute_async_v3` waits for the stream, copies the input out of device memory with `cudaMemcpy`,
runs the graph, and copies the output back, so with an identity graph it is an "echo" engine, and
with the real cuda-bindings on a GPU it moves real device memory (tests marked `gpu`).

The classes carry the real class names; tests/service/backends/test_tensorrt_real_bindings.py checks
every public name and parameter name here against the real TensorRT 10 and 11 bindings, so the
code under test cannot use a name that TensorRT does not have. What the code did is recorded on
`module.state` (builds, the device current at each Builder, the loggers given).
"""

from __future__ import annotations

import enum
import json
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: _Severity, msg: str) -> None:
        raise NotImplementedError


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 0


ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL}
NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8}


@dataclass
class State:
    cudart: Any
    builds: list[dict[str, Any]] = field(default_factory=list)
    builder_devices: list[int | None] = field(default_factory=list)
    loggers: list[Any] = field(default_factory=list)
    executions: int = 0
    build_seconds: float = 0.0  # how long a build takes
    # What the next built engine declares instead of the graph's own types, e.g. {"images": "BF16"}.
    override_dtypes: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current_device(self) -> int | None:
        """The calling thread's device as the builder sees it (the fake knows whether one was set)."""
        if hasattr(self.cudart, "current_device"):
            return self.cudart.current_device()
        err, device = self.cudart.cudaGetDevice()
        return int(device) if int(err) == 0 else None


# ---------------------------------------------------------------------------------------- network
class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self._name, self._shape, self._dtype = name, shape, dtype

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> DataType:
        return self._dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx = b""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


def _tensor(value_info: Any) -> ITensor:
    dims = value_info.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    dtype = ONNX_TYPES[value_info.type.tensor_type.elem_type]
    return ITensor(value_info.name, shape, dtype)


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network, self.logger = network, logger
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def parse_from_file(self, model: str) -> bool:
        import onnx

        try:
            proto = onnx.load(model)
        except Exception as e:
            self.errors.append(f"ModelImporter: could not parse {model}: {e}")
            return False
        initializers = {i.name for i in proto.graph.initializer}
        self.network.inputs = [_tensor(v) for v in proto.graph.input if v.name not in initializers]
        self.network.outputs = [_tensor(v) for v in proto.graph.output]
        self.network.onnx = proto.SerializeToString()
        self.logger.log(_Severity.INFO, f"parsed {model}")
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"timing:"

    def serialize(self) -> bytes:
        return self.data + b"+"


class IBuilderConfig:
    def __init__(self) -> None:
        self.profiles: list[IOptimizationProfile] = []
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pool_limits[pool] = pool_size

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    _state: State  # set on the module's subclass

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self._state.loggers.append(logger)
        self._state.builder_devices.append(self._state.current_device())

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        if not network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)):
            self.logger.log(_Severity.ERROR, "the fake builds strongly typed networks only")
            return None
        (profile,) = config.profiles
        (tensor,) = network.inputs
        (output,) = network.outputs
        types_ = {tensor.name: tensor.dtype.name, output.name: output.dtype.name}
        types_ |= self._state.override_dtypes
        header = {
            "input": tensor.name,
            "output": output.name,
            "profile": [list(s) for s in profile.shapes[tensor.name]],
            "output_dims": list(output.shape[1:]),
            "dtypes": types_,
        }
        time.sleep(self._state.build_seconds)
        self._state.builds.append({**header, "device": self._state.current_device()})
        self.logger.log(_Severity.INFO, "built a fake engine")
        return ENGINE_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx


# ---------------------------------------------------------------------------------------- runtime
class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(shape)
        lo, _, hi = self.engine.profile
        if name != self.engine.input or len(shape) != len(lo):
            return False
        if any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = self.shapes[self.engine.input][0]
        return self.shapes[name] if name == self.engine.input else (batch, *self.engine.output_dims)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return name in (self.engine.input, self.engine.output)

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine, rt = self.engine, self.engine._state.cudart
        in_shape = self.shapes[engine.input]
        out_shape = self.get_tensor_shape(engine.output)
        host_in = np.empty(in_shape, NUMPY_TYPES[engine.dtypes[engine.input]])
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ok = int(rt.cudaStreamSynchronize(stream_handle)[0]) == 0
        ok = (
            ok
            and int(rt.cudaMemcpy(host_in.ctypes.data, self.addresses[engine.input], host_in.nbytes, d2h)[0])
            == 0
        )
        if not ok:
            return False
        (result,) = engine.session.run(None, {engine.input: host_in})
        host_out = np.ascontiguousarray(result, NUMPY_TYPES[engine.dtypes[engine.output]]).reshape(out_shape)
        err = rt.cudaMemcpy(self.addresses[engine.output], host_out.ctypes.data, host_out.nbytes, h2d)[0]
        with engine._state.lock:
            engine._state.executions += 1
        return int(err) == 0


class ICudaEngine:
    def __init__(self, state: State, header: dict[str, Any], onnx_bytes: bytes) -> None:
        import onnxruntime

        self._state = state
        self.input, self.output = header["input"], header["output"]
        self.profile = tuple(tuple(s) for s in header["profile"])
        self.output_dims = tuple(header["output_dims"])
        self.dtypes = {name: DataType[value] for name, value in header["dtypes"].items()}
        self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, index: int) -> str:
        return (self.input, self.output)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.input else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        assert name == self.input and profile_index == 0
        return list(self.profile)

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class Runtime:
    _state: State

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self._state.loggers.append(logger)

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        if not data.startswith(ENGINE_MAGIC):
            self.logger.log(_Severity.ERROR, "IRuntime::deserializeCudaEngine: not an engine")
            return None
        header, _, onnx_bytes = data[len(ENGINE_MAGIC) :].partition(b"\n")
        self.logger.log(_Severity.WARNING, "deserialized a fake engine")
        return ICudaEngine(self._state, json.loads(header), onnx_bytes)


# The classes the module exposes, by their real names (checked against the real bindings).
CLASSES = (
    ILogger, Builder, INetworkDefinition, ITensor, OnnxParser, IOptimizationProfile, IBuilderConfig,
    ITimingCache, Runtime, ICudaEngine, IExecutionContext,
)  # fmt: skip
ENUMS = (DataType, TensorIOMode, MemoryPoolType, NetworkDefinitionCreationFlag)


def fake_tensorrt(cudart: Any, version: str = "11.4.0.106") -> types.ModuleType:
    """A `tensorrt` module whose engines move memory with `cudart` (fake or real cuda-bindings)."""
    module = types.ModuleType("tensorrt")
    state = State(cudart)
    module.__dict__.update({cls.__name__: cls for cls in (*CLASSES, *ENUMS)})
    module.Builder = type("Builder", (Builder,), {"_state": state})
    module.Runtime = type("Runtime", (Runtime,), {"_state": state})
    module.__version__ = version
    module.state = state
    return module


def install_fakes(monkeypatch: Any, cudart: Any) -> types.ModuleType:
    """`import tensorrt` gives a fake over `cudart` (fake or real cuda-bindings), and the code's
    `import_cudart` gives `cudart`, for one test (pytest's monkeypatch undoes both)."""
    import sys

    from service.backends import cudart as cudart_module
    from service.backends import tensorrt_build, tensorrt_runtime

    trt = fake_tensorrt(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for module in (cudart_module, tensorrt_runtime, tensorrt_build):
        monkeypatch.setattr(module, "import_cudart", lambda: cudart)
    return trt
