"""The shared libraries an ELF file links (its DT_NEEDED entries), read the way the dynamic loader
reads them: program headers -> PT_DYNAMIC -> DT_NEEDED offsets into the DT_STRTAB string table.

Standard library only, so that the server (which TensorRT runtime onnxruntime's TensorRT provider
needs) and tools/check_gpu_packages.py (which one a wheel needs) share it. 64-bit ELF only: the
images are x86-64 or aarch64. Only the headers and the dynamic section are read, not the whole file.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ENDIAN = {1: "<", 2: ">"}  # EI_DATA: ELFDATA2LSB, ELFDATA2MSB
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
PHDR_SIZE, DYN_SIZE = 56, 16


class ElfError(ValueError):
    """Not a readable 64-bit ELF file (wrong magic, another class, truncated, inconsistent)."""


def needed_libraries(path: Path) -> list[str]:
    """The DT_NEEDED sonames of the ELF file at `path`, in link order (`[]` for a static binary).

    Raises ElfError for a file that is not a readable 64-bit ELF, OSError when it cannot be opened.
    """
    with open(path, "rb") as f:
        end, loads, dynamic = _segments(f, path)
        if dynamic is None:
            return []
        offset, size = dynamic
        tags = _dynamic_entries(_read(f, offset, size - size % DYN_SIZE, path), end)
        needed = [value for tag, value in tags if tag == DT_NEEDED]
        if not needed:
            return []
        single = dict(tags)
        if DT_STRTAB not in single or DT_STRSZ not in single:
            raise ElfError(f"{path}: DT_NEEDED entries without DT_STRTAB/DT_STRSZ")
        table = _read(f, _file_offset(loads, single[DT_STRTAB], path), single[DT_STRSZ], path)
    return [_string(table, offset, path) for offset in needed]


def soname_major(sonames: Iterable[str], library: str) -> int | None:
    """N of the first `lib<library>.so.N[...]` in `sonames` (`libnvinfer.so.10` -> 10), else None."""
    pattern = re.compile(rf"lib{re.escape(library)}\.so\.(\d+)(?:\.\d+)*")
    for name in sonames:
        if found := pattern.fullmatch(name):
            return int(found[1])
    return None


def _segments(f: BinaryIO, path: Path) -> tuple[str, list[tuple[int, int, int]], tuple[int, int] | None]:
    """The struct byte order, the PT_LOAD segments (vaddr, offset, filesz) and PT_DYNAMIC (offset, filesz)."""
    ident = _read(f, 0, 16, path)
    if ident[:4] != ELF_MAGIC:
        raise ElfError(f"{path}: not an ELF file")
    if ident[4] != ELFCLASS64 or ident[5] not in ENDIAN:
        raise ElfError(f"{path}: class {ident[4]}, data {ident[5]}: only 64-bit ELF is read")
    end = ENDIAN[ident[5]]
    (phoff,) = struct.unpack(end + "Q", _read(f, 32, 8, path))
    phentsize, phnum = struct.unpack(end + "HH", _read(f, 54, 4, path))
    if phnum and phentsize < PHDR_SIZE:
        raise ElfError(f"{path}: program header entries of {phentsize} bytes")
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz = struct.unpack(
            end + "IIQQQQ", _read(f, phoff + i * phentsize, 40, path)
        )
        if p_type == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, filesz)
    return end, loads, dynamic


def _read(f: BinaryIO, offset: int, size: int, path: Path) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ElfError(f"{path}: truncated (wanted {size} bytes at offset {offset})")
    return data


def _dynamic_entries(data: bytes, end: str) -> list[tuple[int, int]]:
    """(d_tag, d_val) pairs up to DT_NULL."""
    out = []
    for tag, value in struct.iter_unpack(end + "qQ", data):
        if tag == DT_NULL:
            break
        out.append((tag, value))
    return out


def _file_offset(loads: list[tuple[int, int, int]], vaddr: int, path: Path) -> int:
    """The file offset of virtual address `vaddr`, through the PT_LOAD segment that maps it."""
    for start, offset, size in loads:
        if start <= vaddr < start + size:
            return vaddr - start + offset
    raise ElfError(f"{path}: address {vaddr:#x} of the string table is in no loaded segment")


def _string(table: bytes, offset: int, path: Path) -> str:
    stop = table.find(b"\0", offset)
    if offset >= len(table) or stop < 0:
        raise ElfError(f"{path}: DT_NEEDED offset {offset} outside the string table")
    return table[offset:stop].decode("utf-8", "replace")
