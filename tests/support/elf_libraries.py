"""Tiny real ELF shared libraries, compiled with gcc, to test readers of DT_NEEDED entries.

`stub_library(dir, "libnvinfer.so.10")` builds a library whose soname is that name (plus the
unversioned `libnvinfer.so` link the linker's `-lnvinfer` looks for); `linking_library(dir,
"libx.so", ["libnvinfer.so.10"])` builds one that links them, so its DT_NEEDED names them as a real
onnxruntime provider library or TensorRT binding does. Tests skip only where gcc is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = "int yolor_stub(void) { return 1; }\n"


def gcc() -> str:
    found = shutil.which("gcc")
    if found is None:
        pytest.skip("gcc is not installed: these tests compile tiny ELF libraries")
    return found


def _compile(directory: Path, output: str, *flags: str) -> Path:
    source = directory / "stub.c"
    source.write_text(SOURCE)
    command = [gcc(), "-shared", "-fPIC", "-nostdlib", "-o", str(directory / output), str(source), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr}"
    return directory / output


def stub_library(directory: Path, soname: str) -> Path:
    """`directory/soname`, a library whose DT_SONAME is `soname`, and the `lib*.so` link to it."""
    directory.mkdir(parents=True, exist_ok=True)
    library = _compile(directory, soname, f"-Wl,-soname,{soname}")
    link = directory / re.sub(r"\.so(\.\d+)+$", ".so", soname)
    if link != library and not link.exists():
        link.symlink_to(library.name)
    return library


def linking_library(directory: Path, name: str, sonames: list[str], *flags: str) -> Path:
    """`directory/name`, linked (in this order) against stub libraries with these sonames; `flags`
    go to gcc (e.g. `-Wl,-Ttext-segment=0x10000000`: addresses then differ from file offsets)."""
    stubs = directory / "stubs"
    for soname in sonames:
        stub_library(stubs, soname)
    links = ["-l" + re.sub(r"^lib|\.so(\.\d+)*$", "", soname) for soname in sonames]
    return _compile(directory, name, *flags, "-Wl,--no-as-needed", f"-L{stubs}", *links)


def readelf_needed(path: Path) -> list[str] | None:
    """binutils' view of `path`'s DT_NEEDED entries (a reference), or None without readelf."""
    readelf = shutil.which("readelf")
    if readelf is None:
        return None
    done = subprocess.run([readelf, "-dW", str(path)], capture_output=True, text=True, check=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", done.stdout)
