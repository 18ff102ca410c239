"""The public API of a real TensorRT Python bindings wheel, read without TensorRT's libraries or a GPU.

The bindings (`tensorrt_bindings/tensorrt.so` in NVIDIA's `tensorrt-cuXX-bindings` wheel, 1-2 MB on
PyPI) link libnvinfer, libnvinfer_plugin and libnvonnxparser (hundreds of MB, downloaded from NVIDIA's
own index). Importing the module only needs a few of their functions to exist, none to run: stand-in
libraries with those names and symbols (compiled here with gcc) let it import, and every class,
method signature (pybind11's docstrings) and enum of the real module can be read.

`real_api(version)` downloads the wheel once (pip, into a cache under the venv), builds the stand-ins
and returns the API as a dict; `python tensorrt_api.py SITE STUBS [PROBE]` is what it runs in a
subprocess (the real module must not meet the test process's fakes).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

CACHE = Path(sys.prefix) / "cache" / "tensorrt-bindings"
LIBRARIES = ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser")


def _params(signature: str) -> list[str]:
    """Parameter names of one pybind11 signature `name(self: T, a: U, b: V = 1) -> R`: ["a", "b="]."""
    inner = signature[signature.index("(") + 1 : signature.rindex(") ->")]
    names, depth, start = [], 0, 0
    for i, ch in enumerate(inner + ","):
        depth += 1 if ch in "[(" else -1 if ch in "])" else 0
        if ch == "," and depth == 0:
            part = inner[start:i].strip()
            start = i + 1
            if part:  # "name: type = default" -> "name=", "name: type" -> "name"
                names.append(part.split(":")[0].split("=")[0].strip() + ("=" if "=" in part else ""))
    return [n for n in names if n not in ("self", "*args", "**kwargs")]


def _signatures(name: str, doc: str | None) -> list[list[str]]:
    """Every overload's parameter names, from the docstring pybind11 writes."""
    lines = (doc or "").splitlines()
    pattern = re.compile(rf"^\s*(?:\d+\.\s*)?{re.escape(name)}\(.*\) ->")
    return [_params(line.strip().lstrip("0123456789. ")) for line in lines if pattern.match(line)]


def describe(module: Any) -> dict[str, Any]:
    """{"version", "classes": {class: {member: {"kind", "signatures"}}}, "enums": {enum: [members]}}."""
    classes: dict[str, Any] = {}
    enums: dict[str, list[str]] = {}
    for cls_name, cls in vars(module).items():
        if not isinstance(cls, type) or cls_name.startswith("_"):
            continue
        if hasattr(cls, "__members__"):
            enums[cls_name] = list(cls.__members__)
        members: dict[str, Any] = {}
        for name in dir(cls):
            if name.startswith("_") and name != "__init__":
                continue
            raw = inspect_static(cls, name)
            if isinstance(raw, type):
                members[name] = {"kind": "class", "signatures": []}
                if hasattr(raw, "__members__"):
                    enums[f"{cls_name}.{name}"] = list(raw.__members__)
            elif isinstance(raw, property):
                members[name] = {"kind": "property", "signatures": []}
            elif callable(raw):
                members[name] = {
                    "kind": "method",
                    "signatures": _signatures(name, getattr(raw, "__doc__", "")),
                }
            else:
                members[name] = {"kind": "value", "signatures": []}
        classes[cls_name] = members
    return {"version": str(module.__version__), "classes": classes, "enums": enums}


def inspect_static(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return getattr(cls, name)


# ------------------------------------------------------------------------------------- the outside
def _wheel(version: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(f"tensorrt_cu13_bindings-{version}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "-d", str(CACHE), f"tensorrt-cu13-bindings=={version}"],
            check=True, timeout=300,
        )  # fmt: skip
        found = sorted(CACHE.glob(f"tensorrt_cu13_bindings-{version}-*.whl"))
    return found[0]


def _undefined_symbols(library: Path) -> list[str]:
    """Undefined, unversioned function symbols that nothing loaded here provides (TensorRT's)."""
    out = subprocess.run(
        ["readelf", "--dyn-syms", "-W", str(library)], capture_output=True, text=True, check=True
    )
    process = ctypes.CDLL(None)
    symbols = []
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[6] == "UND" and "@" not in fields[7]:
            name = fields[7]
            if not name.startswith(("Py", "_Py", "_ITM", "__gmon")) and not hasattr(process, name):
                symbols.append(name)
    return symbols


def _stand_ins(library: Path, major: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "stand_in.c"
    source.write_text("".join(f"long {name}(void) {{ return 0; }}\n" for name in _undefined_symbols(library)))
    for base in LIBRARIES:
        soname = f"{base}.so.{major}"
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", str(directory / soname), f"-Wl,-soname,{soname}", str(source)],
            check=True,
        )
    return directory


def real_api(version: str, probe: str = "") -> dict[str, Any]:
    """The real bindings' API for TensorRT `version` (e.g. "11.4.0.106"), cached as JSON; with
    `probe` (Python code run after the import, `trt` bound to the real module, the repository on
    sys.path), its printed lines in "probe" instead (not cached)."""
    target = CACHE / version
    api_file = target / "api.json"
    if api_file.is_file() and not probe:
        return json.loads(api_file.read_text())  # type: ignore[no-any-return]
    site = target / "site"
    if not (site / "tensorrt_bindings" / "tensorrt.so").is_file():
        with zipfile.ZipFile(_wheel(version)) as wheel:
            wheel.extractall(site)
    stubs = _stand_ins(site / "tensorrt_bindings" / "tensorrt.so", version.split(".")[0], target / "stubs")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, __file__, str(site), str(stubs), probe],
        capture_output=True, text=True, check=True, env=env, timeout=120,
    )  # fmt: skip
    if probe:
        return {"probe": out.stdout.splitlines()}
    api_file.write_text(out.stdout)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main(site: str, stubs: str, probe: str = "") -> None:
    for base in LIBRARIES:  # loaded first, so the bindings' own dependencies resolve to them by soname
        (library,) = Path(stubs).glob(f"{base}.so.*")
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    sys.path.insert(0, site)
    import tensorrt_bindings as trt

    if probe:
        exec(probe, {"trt": trt})
    else:
        sys.stdout.write(json.dumps(describe(trt)))


if __name__ == "__main__":
    main(*sys.argv[1:])
