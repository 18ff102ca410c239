"""Which TensorRT path the GPU image really has, from the wheels its pins resolve to.

    python tools/check_gpu_packages.py [--dockerfile Dockerfile]

Reads the pins of the Dockerfile's `ARG GPU_PACKAGES`, downloads (`pip download --no-deps`, Linux
x86-64 wheels, ~260 MB) onnxruntime-gpu and the TensorRT bindings of the pinned TensorRT
(`tensorrt-cuXX-bindings`, same version spec: a small wheel, unlike the libraries), and reads which
libnvinfer.so.N each links: onnxruntime's TensorRT provider library and TensorRT's Python binding.
The server's rule (`service.backends.onnx_runtime.tensorrt_ep_problem`) then says whether onnxruntime's
TensorRT provider is requested in that image. The Dockerfile states the outcome on one line,
`# check_gpu_packages: <claim>`, the claim as this tool prints it: "onnxruntime-gpu TensorRT EP needs
TensorRT 10, the image has 11: the EP is not requested".

Exit status 0 when that line says what the wheels say, 1 when it does not (or is missing, or a wheel
names no libnvinfer), 2 when the pins cannot be read or a download fails. pip's own configuration
(PIP_INDEX_URL, PIP_CERT, ...) applies to the downloads.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from service.backends.elf_needed import ElfError, needed_libraries, soname_major
from service.backends.onnx_runtime import tensorrt_ep_problem

ROOT = Path(__file__).resolve().parents[1]
CLAIM = re.compile(r"^# check_gpu_packages: (.*)$", re.M)
EP_MEMBER = re.compile(r"onnxruntime/capi/libonnxruntime_providers_tensorrt\.so")
BINDING_MEMBER = re.compile(r"tensorrt_bindings/tensorrt[^/]*\.so")
PLATFORM = "manylinux_2_28_x86_64"  # the images' platform; the wheels' DT_NEEDED do not depend on it

Downloader = Callable[[str, Path], Path]


class CheckError(Exception):
    """The check could not run: no pins, a failed download, a wheel without the library looked for."""


def gpu_pins(dockerfile: str) -> dict[str, str]:
    """Distribution name -> requirement, from the default of `ARG GPU_PACKAGES="..."`."""
    found = re.search(r"^ARG GPU_PACKAGES=(.*)$", dockerfile, re.M)
    if found is None:
        raise CheckError("the Dockerfile has no `ARG GPU_PACKAGES=...` line")
    (value,) = shlex.split(found[1])
    pins = {}
    for requirement in value.split():
        name = re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0]
        pins[name.lower().replace("_", "-")] = requirement
    return pins


def requirements(pins: dict[str, str]) -> tuple[str, str]:
    """(onnxruntime-gpu requirement, TensorRT bindings requirement of the same version spec)."""
    tensorrt = [name for name in pins if re.fullmatch(r"tensorrt-cu\d+", name)]
    if "onnxruntime-gpu" not in pins or len(tensorrt) != 1:
        raise CheckError(f"GPU_PACKAGES must pin onnxruntime-gpu and one tensorrt-cuXX, not {sorted(pins)}")
    (name,) = tensorrt
    return pins["onnxruntime-gpu"], f"{name}-bindings{pins[name][len(name) :]}"


def pip_download(requirement: str, dest: Path, python_version: str) -> Path:
    """The wheel pip downloads for `requirement` (Linux x86-64, `python_version`) into `dest`."""
    before = set(dest.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
               PLATFORM, "--python-version", python_version, "--dest", str(dest), requirement]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    new = sorted(set(dest.glob("*.whl")) - before)
    if done.returncode != 0 or len(new) != 1:
        raise CheckError(f"pip download {requirement} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return new[0]


def tensorrt_major(wheel: Path, member: re.Pattern[str], scratch: Path) -> tuple[str, int | None]:
    """(the library in `wheel` whose path matches `member`, the N of the libnvinfer.so.N it links)."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if member.fullmatch(n)]
        if len(names) != 1:
            raise CheckError(f"{wheel.name}: expected one {member.pattern}, found {names}")
        path = Path(archive.extract(names[0], scratch))
    try:
        return names[0], soname_major(needed_libraries(path), "nvinfer")
    except ElfError as e:
        raise CheckError(str(e)) from e


def verdict(ep_major: int, image_major: int) -> tuple[str, str]:
    """(the Dockerfile's claim, what it means) for onnxruntime's TensorRT provider in the image, by
    the server's own rule."""
    requested = tensorrt_ep_problem(ep_major, {image_major: "the image"}) is None
    claim = (
        f"onnxruntime-gpu TensorRT EP needs TensorRT {ep_major}, the image has {image_major}: "
        f"the EP is {'requested' if requested else 'not requested'}"
    )
    meaning = "TensorRT runs through the native backend"
    return claim, meaning + (" (and through that EP with YOLOR_BACKEND=onnxruntime)" if requested else "")


def check(dockerfile: Path, download: Downloader, scratch: Path, out: Callable[[str], None] = print) -> int:
    """Run the check; `download(requirement, dest) -> wheel`. Returns the exit status (0 or 1)."""
    text = dockerfile.read_text()
    ort_requirement, bindings_requirement = requirements(gpu_pins(text))
    majors = []
    for requirement, member in ((ort_requirement, EP_MEMBER), (bindings_requirement, BINDING_MEMBER)):
        wheel = download(requirement, scratch)
        library, major = tensorrt_major(wheel, member, scratch / wheel.stem)
        if major is None:
            out(f"FAIL: {wheel.name}: {library} names no libnvinfer.so.N, so its TensorRT is unknown")
            return 1
        out(f"{requirement}: {wheel.name}: {library} links libnvinfer.so.{major}")
        majors.append(major)
    claim, meaning = verdict(*majors)
    out(f"{claim}; {meaning}")
    claims = CLAIM.findall(text)
    if claims != [claim]:
        said = f"says {claims}" if claims else "has no `# check_gpu_packages: ...` line"
        out(f"FAIL: {dockerfile} {said}; the wheels say: {claim}")
        return 1
    out(f"{dockerfile} says the same.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the image's Python, for the wheels' tags (default: this one)")  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="check-gpu-packages-") as tmp:
        try:
            return check(args.dockerfile, lambda r, d: pip_download(r, d, args.python_version), Path(tmp))
        except CheckError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
