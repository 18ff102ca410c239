"""tools/check_gpu_packages.py without the network: its downloads replaced by small local wheels (zip
files holding tiny ELF libraries compiled with gcc) that link the TensorRT majors each case needs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.support.elf_libraries import linking_library
from tools.check_gpu_packages import CheckError, check, gpu_pins, main, requirements

pytestmark = pytest.mark.unit

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"
EP_LIBRARY = "onnxruntime/capi/libonnxruntime_providers_tensorrt.so"
BINDING = "tensorrt_bindings/tensorrt.so"


class FakeIndex:
    """`download(requirement, dest)` that builds the wheel instead: onnxruntime-gpu's with a TensorRT
    provider library linking `ep`, the TensorRT bindings' with a binding linking `binding`."""

    def __init__(self, tmp_path: Path, ep: list[str], binding: list[str]) -> None:
        self.tmp_path, self.ep, self.binding = tmp_path, ep, binding
        self.requested: list[str] = []

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.requested.append(requirement)
        if requirement.startswith("onnxruntime-gpu"):
            name, member, sonames = "onnxruntime_gpu-1.31.1", EP_LIBRARY, self.ep
        elif requirement.startswith("tensorrt-cu13-bindings"):
            name, member, sonames = "tensorrt_cu13_bindings-11.4.0.106", BINDING, self.binding
        else:
            raise AssertionError(f"unexpected download {requirement}")
        library = linking_library(self.tmp_path / "build" / name, Path(member).name, sonames)
        wheel = dest / f"{name}-cp311-cp311-manylinux_2_28_x86_64.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{name}.dist-info/METADATA", "Metadata-Version: 2.1\n")
            archive.write(library, member)
        return wheel


def run(
    tmp_path: Path, dockerfile: Path, ep: list[str], binding: list[str]
) -> tuple[int, list[str], FakeIndex]:
    index, lines = FakeIndex(tmp_path, ep, binding), []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    status = check(dockerfile, index, scratch, out=lines.append)
    return status, lines, index


def dockerfile_with(tmp_path: Path, old: str, new: str) -> Path:
    text = DOCKERFILE.read_text()
    assert old in text
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace(old, new))
    return path


IMAGE = (["libcublas.so.13", "libnvinfer.so.10", "libnvonnxparser.so.10"], ["libnvinfer.so.11"])


def test_the_dockerfile_states_what_the_wheels_say(tmp_path):
    status, lines, index = run(tmp_path, DOCKERFILE, *IMAGE)
    assert status == 0, lines
    assert index.requested == ["onnxruntime-gpu==1.31.*", "tensorrt-cu13-bindings==11.4.*"]
    assert (
        "onnxruntime-gpu TensorRT EP needs TensorRT 10, the image has 11: the EP is not requested; "
        "TensorRT runs through the native backend"
    ) in lines
    assert lines[-1].endswith("says the same.")


def test_a_false_claim_in_the_dockerfile_fails(tmp_path):
    dockerfile = dockerfile_with(tmp_path, "the image has 11", "the image has 10")
    status, lines, _ = run(tmp_path, dockerfile, *IMAGE)
    assert status == 1
    assert (
        lines[-1].startswith("FAIL:") and "the image has 10" in lines[-1] and "the image has 11" in lines[-1]
    )


def test_a_claim_the_runtime_rule_contradicts_fails(tmp_path):
    # Wheels whose TensorRT majors agree: the server would request the EP, the Dockerfile says not.
    status, lines, _ = run(tmp_path, DOCKERFILE, ["libnvinfer.so.11"], ["libnvinfer.so.11"])
    assert status == 1
    assert "the image has 11: the EP is requested; " in " ".join(lines) and lines[-1].startswith("FAIL:")


def test_a_missing_claim_fails(tmp_path):
    dockerfile = dockerfile_with(tmp_path, "# check_gpu_packages: ", "# ")
    status, lines, _ = run(tmp_path, dockerfile, *IMAGE)
    assert status == 1 and "has no `# check_gpu_packages" in lines[-1]


def test_a_provider_library_without_libnvinfer_fails(tmp_path):
    status, lines, _ = run(tmp_path, DOCKERFILE, ["libcudart.so.13"], ["libnvinfer.so.11"])
    assert status == 1 and "names no libnvinfer" in lines[-1]


def test_the_pins_are_read_from_the_dockerfile_argument():
    pins = gpu_pins(DOCKERFILE.read_text())
    assert set(pins) == {"onnxruntime-gpu", "tensorrt-cu13", "cuda-python"}
    assert requirements(pins) == (
        pins["onnxruntime-gpu"],
        "tensorrt-cu13-bindings" + pins["tensorrt-cu13"][13:],
    )
    assert requirements({"onnxruntime-gpu": "onnxruntime-gpu", "tensorrt-cu12": "tensorrt-cu12>=10,<11"}) == (
        "onnxruntime-gpu",
        "tensorrt-cu12-bindings>=10,<11",
    )
    with pytest.raises(CheckError, match="one tensorrt-cuXX"):
        requirements({"onnxruntime-gpu": "onnxruntime-gpu==1.31.*"})


def test_a_dockerfile_without_pins_exits_2_before_downloading(tmp_path, capsys):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian\n")
    assert main(["--dockerfile", str(dockerfile)]) == 2
    assert "no `ARG GPU_PACKAGES" in capsys.readouterr().err
