"""ONNX Runtime's GPU providers, which cannot run here: which providers are requested (the TensorRT
provider only where the TensorRT its library links is installed, read from real ELF files compiled
with gcc), onnxruntime's own fallback kept off (with a fake `onnxruntime` that behaves like 1.31's
`InferenceSession`, and with the real CPU build whose session creation is made to fail), the GPU a
session really runs on, and the precision reported without a TensorRT FP16 flag."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.backends import BackendUnavailable
from service.backends import onnx_runtime as ort_backend
from service.backends.elf_needed import ElfError, needed_libraries, soname_major
from service.backends.onnx_runtime import (
    CPU,
    CUDA,
    TENSORRT,
    TENSORRT_EP_LIBRARY,
    OnnxRuntimeBackend,
    check_gpu_device,
    installed_tensorrt_majors,
    tensorrt_ep_major,
    tensorrt_ep_problem,
    usable_providers,
)
from tests.support.elf_libraries import linking_library, readelf_needed, stub_library
from tests.support.model_files import write_model_dir

pytestmark = pytest.mark.unit
GPU_NAMES = (TENSORRT, CUDA)
TOP_K = 5


# --- a fake onnxruntime, faithful to 1.31's InferenceSession where it matters ----------------------


class FakeSession:
    """`InferenceSession.__init__` of onnxruntime 1.31: a RuntimeError while creating falls back to
    `_fallback_providers` (names only: options lost) after printing a banner, unless the keyword
    `enable_fallback=0` was given (`honours_kwarg`); `run` does the same on an EP failure."""

    def __init__(self, ort: FakeOrt, providers: list[Any], kwargs: dict[str, Any]) -> None:
        self.ort = ort
        self._enable_fallback = not (ort.honours_kwarg and int(kwargs.get("enable_fallback", 1)) == 0)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        with_cuda = CUDA in names and TENSORRT in names and TENSORRT in ort.available
        fallback = [CUDA, CPU] if with_cuda else [CPU]
        try:
            self._create(providers)
        except RuntimeError as e:
            if not self._enable_fallback:
                raise
            print("*************** EP Error ***************")  # noqa: T201 - what onnxruntime does
            print(f"EP Error {e} when using {providers}")  # noqa: T201
            print(f"Falling back to {fallback} and retrying.")  # noqa: T201
            self._create(fallback)
            self._enable_fallback = False

    def _create(self, providers: list[Any]) -> None:
        self.ort.requested.append(providers)
        self.providers, self.options = [], {}
        for provider in providers:
            name, options = provider if isinstance(provider, tuple) else (provider, {})
            if name not in self.ort.available:
                continue
            if name in self.ort.failing:
                raise RuntimeError(f"{name} failed to initialise")
            if name in GPU_NAMES:
                device = int(options.get("device_id", 0))
                if device >= self.ort.gpus:
                    raise RuntimeError(f"CUDA failure 101: invalid device ordinal ({device})")
                self.options[name] = {"device_id": str(device)}
            else:
                self.options[name] = {}
            self.providers.append(name)

    def get_providers(self) -> list[str]:
        return list(self.providers)

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return self.options

    def disable_fallback(self) -> None:
        self._enable_fallback = False

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="images", type="tensor(float)", shape=["batch", 3, 64, 64])]

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="out", type="tensor(float)", shape=["batch", TOP_K, 6])]

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.ort.run_fails and self.providers[0] in GPU_NAMES:
            if not self._enable_fallback:
                raise RuntimeError("EP failure")
            print(f"EP Error: EP failure using {self.providers}")  # noqa: T201
            self._create([CPU])
            self._enable_fallback = False
        return [np.zeros((len(feed["images"]), TOP_K, 6), np.float32)]


class FakeOrt:
    """The part of the `onnxruntime` module the backend uses."""

    __version__ = "1.31.1-fake"
    GraphOptimizationLevel = SimpleNamespace(ORT_ENABLE_ALL=99)
    ExecutionMode = SimpleNamespace(ORT_SEQUENTIAL=0)

    def __init__(self, available: list[str], *, gpus: int = 1, failing: tuple[str, ...] = (),
                 honours_kwarg: bool = True, run_fails: bool = False) -> None:  # fmt: skip
        self.available, self.gpus, self.failing = available, gpus, failing
        self.honours_kwarg, self.run_fails = honours_kwarg, run_fails
        self.requested: list[list[Any]] = []
        self.__file__ = "/nonexistent/onnxruntime/__init__.py"

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def SessionOptions(self) -> SimpleNamespace:
        return SimpleNamespace(add_session_config_entry=lambda key, value: None)

    def InferenceSession(
        self, path: str, *, sess_options: Any, providers: list[Any], **kwargs: Any
    ) -> FakeSession:
        return FakeSession(self, providers, kwargs)


def names(providers: list[Any]) -> list[str]:
    return [p[0] if isinstance(p, tuple) else p for p in providers]


@pytest.fixture
def tensorrt(monkeypatch):
    """Fakes the TensorRT majors: `tensorrt(ep=10, installed={11: "where"})`."""

    def fake(ep: int | None, installed: dict[int, str]) -> None:
        monkeypatch.setattr(ort_backend, "tensorrt_ep_major", lambda package: ep)
        monkeypatch.setattr(ort_backend, "installed_tensorrt_majors", lambda: installed)

    return fake


def load(monkeypatch, fake: FakeOrt, device: str, **kwargs: Any) -> OnnxRuntimeBackend:
    monkeypatch.setattr(ort_backend, "_onnxruntime", lambda: fake)
    return OnnxRuntimeBackend(
        Path("model.onnx"), head="topk", max_batch_size=4, profile=("images", 64), device=device, **kwargs
    )


# --- A: the TensorRT major that onnxruntime's TensorRT provider links ------------------------------


@pytest.mark.parametrize(
    "flags", [(), ("-Wl,-Ttext-segment=0x10000000",)], ids=["at-0", "addresses-not-offsets"]
)
def test_needed_libraries_reads_what_the_linker_wrote(tmp_path, flags):
    sonames = ["libnvinfer.so.10", "libnvonnxparser.so.10", "libcudart.so.13"]
    library = linking_library(tmp_path, "libonnxruntime_providers_tensorrt.so", sonames, *flags)
    assert needed_libraries(library) == sonames  # -nostdlib: exactly the libraries linked, in order
    reference = readelf_needed(library)
    assert reference is None or reference == sonames
    assert needed_libraries(stub_library(tmp_path / "plain", "libplain.so.1")) == []


def test_needed_libraries_agrees_with_readelf_on_system_libraries():
    candidates = [Path("/bin/ls"), *sorted(Path("/usr/lib/x86_64-linux-gnu").glob("libstdc++.so.6*"))]
    checked = 0
    for path in [p for p in candidates if p.is_file()]:
        reference = readelf_needed(path)
        if reference is not None:
            assert needed_libraries(path) == reference, path
            checked += 1
    if not checked:
        pytest.skip("no readelf or no system library to compare with")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not an ELF file at all", "not an ELF file"),
        (b"\x7fELF\x01\x01\x01" + bytes(60), "only 64-bit"),
        (b"\x7fELF\x02\x01\x01" + bytes(9), "truncated"),
    ],
)
def test_a_file_that_is_no_readable_elf_is_an_elf_error(tmp_path, content, problem):
    path = tmp_path / "lib.so"
    path.write_bytes(content)
    with pytest.raises(ElfError, match=problem):
        needed_libraries(path)


def test_a_cut_elf_file_is_an_elf_error(tmp_path):
    library = linking_library(tmp_path, "libx.so", ["libnvinfer.so.10"])
    data = library.read_bytes()
    library.write_bytes(data[:200])  # headers kept, dynamic section gone
    with pytest.raises(ElfError, match="truncated"):
        needed_libraries(library)


@pytest.mark.parametrize(
    ("sonames", "major"),
    [
        (["libcudart.so.13", "libnvinfer.so.10"], 10),
        (["libnvinfer.so.11.4.0"], 11),
        (["libnvinfer_plugin.so.10", "libnvinfer.so"], None),
        ([], None),
    ],
)
def test_soname_major(sonames, major):
    assert soname_major(sonames, "nvinfer") == major


def test_tensorrt_ep_major_reads_the_providers_library(tmp_path, caplog):
    package = tmp_path / "onnxruntime"
    linking_library(package / "capi", TENSORRT_EP_LIBRARY, ["libcublas.so.13", "libnvinfer.so.10"])
    assert tensorrt_ep_major(package) == 10
    assert tensorrt_ep_major(tmp_path / "elsewhere") is None
    assert TENSORRT_EP_LIBRARY in caplog.text  # the unreadable library is named


def test_installed_tensorrt_majors_from_the_pip_libs_and_the_loader(tmp_path, monkeypatch):
    libs = tmp_path / "site" / "tensorrt_libs"
    libs.mkdir(parents=True)
    (libs / "__init__.py").write_text("")
    for name in ("libnvinfer.so.11", "libnvinfer_plugin.so.11", "libnvonnxparser.so.11"):
        (libs / name).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(ort_backend.ctypes.util, "find_library", lambda name: "libnvinfer.so.10")
    found = installed_tensorrt_majors()
    assert sorted(found) == [10, 11]
    assert found[11] == str(libs / "libnvinfer.so.11")
    monkeypatch.setattr(ort_backend.ctypes.util, "find_library", lambda name: None)
    assert sorted(installed_tensorrt_majors()) == [11]


@pytest.mark.parametrize(
    ("ep", "installed", "usable", "says"),
    [
        (10, {10: "libnvinfer.so.10 on the loader's path"}, True, None),
        (10, {10: "a", 11: "b"}, True, None),
        (10, {11: "/site/tensorrt_libs/libnvinfer.so.11"}, False, "needs TensorRT 10 .*has TensorRT 11"),
        (10, {}, False, "needs TensorRT 10 .*has no TensorRT"),
        (None, {11: "b"}, False, "unknown"),
    ],
)
def test_tensorrt_ep_problem(ep, installed, usable, says):
    problem = tensorrt_ep_problem(ep, installed)
    assert (problem is None) == usable
    if says:
        assert problem is not None and re.search(says, problem)


def test_the_tensorrt_provider_is_not_requested_for_another_tensorrt(monkeypatch, tensorrt, caplog):
    fake = FakeOrt([TENSORRT, CUDA, CPU])
    tensorrt(ep=10, installed={11: "/site/tensorrt_libs/libnvinfer.so.11"})
    with caplog.at_level(logging.WARNING):
        backend = load(monkeypatch, fake, "cuda")
    assert names(fake.requested[0]) == [CUDA, CPU]
    assert backend.providers == [CUDA, CPU]
    (line,) = [r.getMessage() for r in caplog.records if TENSORRT in r.getMessage()]
    assert "TensorRT 10" in line and "TensorRT 11" in line and "CUDA provider runs the model" in line
    assert usable_providers(fake) == [CUDA, CPU]


def test_the_tensorrt_provider_is_requested_for_its_own_tensorrt(monkeypatch, tensorrt, caplog):
    fake = FakeOrt([TENSORRT, CUDA, CPU])
    tensorrt(ep=10, installed={10: "libnvinfer.so.10 on the loader's path"})
    with caplog.at_level(logging.WARNING):
        load(monkeypatch, fake, "cuda:0")
    assert names(fake.requested[0]) == [TENSORRT, CUDA, CPU]
    assert not caplog.records


# --- B: onnxruntime's own fallback stays off; the session runs on the GPU asked for ----------------


def test_a_failed_gpu_provider_does_not_fall_back_to_gpu_0(monkeypatch, tensorrt, capsys):
    fake = FakeOrt([TENSORRT, CUDA, CPU], gpus=2, failing=(TENSORRT,))
    tensorrt(ep=10, installed={10: "here"})
    with pytest.raises(BackendUnavailable, match=r"device=cuda:1: onnxruntime could not initialise"):
        load(monkeypatch, fake, "cuda:1")
    assert len(fake.requested) == 1  # no second try without the options
    assert capsys.readouterr().out == ""


def test_a_fallback_onnxruntime_does_anyway_is_refused_and_logged(monkeypatch, tensorrt, capsys, caplog):
    fake = FakeOrt([TENSORRT, CUDA, CPU], gpus=2, failing=(TENSORRT,), honours_kwarg=False)
    tensorrt(ep=10, installed={10: "here"})
    with pytest.raises(BackendUnavailable, match=r"runs CUDAExecutionProvider on GPU 0, not GPU 1"):
        load(monkeypatch, fake, "cuda:1")
    assert fake.requested[1] == [CUDA, CPU]  # what onnxruntime retried: without device_id
    assert capsys.readouterr().out == ""
    assert "EP Error" in caplog.text and "Falling back" in caplog.text


def test_auto_runs_on_the_cpu_when_the_gpu_fails_and_says_so(monkeypatch, capsys, caplog):
    fake = FakeOrt([CUDA, CPU], gpus=0)
    with caplog.at_level(logging.WARNING):
        backend = load(monkeypatch, fake, "auto")
    assert backend.providers == [CPU] and not backend.accelerator
    assert names(fake.requested[-1]) == [CPU]
    assert capsys.readouterr().out == ""
    assert "running on the CPU" in caplog.text and "invalid device ordinal" in caplog.text


def test_an_ep_failure_while_running_raises_instead_of_moving_to_the_cpu(monkeypatch, capsys):
    fake = FakeOrt([CUDA, CPU], run_fails=True)
    backend = load(monkeypatch, fake, "cuda")
    with pytest.raises(RuntimeError, match="EP failure"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))
    assert capsys.readouterr().out == ""
    assert fake.requested == [fake.requested[0]]  # the session was not re-created on other providers


@pytest.mark.parametrize(
    ("device", "options", "ok"),
    [
        ("cuda:2", {CUDA: {"device_id": "2"}}, True),
        ("cuda", {TENSORRT: {"device_id": "0"}, CUDA: {"device_id": "0"}}, True),
        ("cuda:1", {TENSORRT: {"device_id": "1"}, CUDA: {"device_id": "0"}}, False),
        ("cuda:1", {CUDA: {}}, False),
    ],
)
def test_check_gpu_device(device, options, ok):
    session = SimpleNamespace(
        get_providers=lambda: [*options, CPU], get_provider_options=lambda: {**options, CPU: {}}
    )
    if ok:
        check_gpu_device(session, device)
    else:
        with pytest.raises(BackendUnavailable, match=f"device={device}"):
            check_gpu_device(session, device)


@pytest.fixture
def real_ort_with_a_failing_gpu(monkeypatch):
    """The installed (CPU) onnxruntime, told it has CUDA, whose session creation fails as a CUDA
    provider without a GPU does: its own `InferenceSession.__init__` decides what happens next."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    create = ort.InferenceSession._create_inference_session

    def failing_on_cuda(self, providers, provider_options, *args):
        if CUDA in names(providers or []):
            self._fallback_providers = [CPU]  # what onnxruntime sets before it creates the session
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return create(self, providers, provider_options, *args)

    monkeypatch.setattr(ort.InferenceSession, "_create_inference_session", failing_on_cuda)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    return ort


def test_real_onnxruntime_explicit_cuda_fails_without_printing(real_ort_with_a_failing_gpu, tmp_path, capsys):
    write_model_dir(tmp_path, onnx=True)
    with pytest.raises(BackendUnavailable, match=r"could not initialise.*no CUDA-capable device"):
        OnnxRuntimeBackend(tmp_path / "model.onnx", head="topk", max_batch_size=2, profile=("images", 64),
                           device="cuda")  # fmt: skip
    assert capsys.readouterr().out == ""


def test_real_onnxruntime_auto_falls_back_visibly(real_ort_with_a_failing_gpu, tmp_path, capsys, caplog):
    write_model_dir(tmp_path, onnx=True)
    with caplog.at_level(logging.WARNING):
        backend = OnnxRuntimeBackend(tmp_path / "model.onnx", head="topk", max_batch_size=2,
                                     profile=("images", 64), device="auto")  # fmt: skip
    assert backend.providers == [CPU]
    assert capsys.readouterr().out == ""
    assert "no CUDA-capable device" in caplog.text and "running on the CPU" in caplog.text
    assert backend._session._enable_fallback is False  # and `run` will not switch providers either


# --- C: no TensorRT FP16 flag; the precision reported is the graph's ----------------------------------


@pytest.mark.parametrize("fp16", [True, False])
def test_the_tensorrt_provider_gets_no_precision_flag(monkeypatch, tensorrt, fp16):
    fake = FakeOrt([TENSORRT, CUDA, CPU])
    tensorrt(ep=10, installed={10: "here"})
    backend = load(monkeypatch, fake, "cuda", fp16=fp16)
    (trt_name, trt_options), *_ = fake.requested[0]
    assert trt_name == TENSORRT and not [k for k in trt_options if "fp16" in k or "int8" in k]
    assert backend.providers == [TENSORRT, CUDA, CPU]
    assert backend.precision == ("fp16" if fp16 else "fp32")


@pytest.mark.parametrize(("fp16", "precision", "reported"), [(True, None, "fp16"), (False, None, "fp32"),
                                                             (False, "int8", "int8")])  # fmt: skip
def test_the_fp16_export_on_the_cuda_provider_reports_fp16(monkeypatch, tensorrt, fp16, precision, reported):
    fake = FakeOrt([TENSORRT, CUDA, CPU])
    tensorrt(ep=10, installed={11: "here"})  # the GPU image: the CUDA provider runs the FP16 export
    backend = load(monkeypatch, fake, "cuda", fp16=fp16, precision=precision)
    assert backend.providers == [CUDA, CPU]
    assert backend.precision == reported
