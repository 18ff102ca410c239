"""What to predict: command-line source specs expanded to files, in a deterministic order.

A spec is an image or video file, a folder (searched recursively for known extensions), a glob
(`data/**/*.jpg`), or `@list.txt` (one spec per line; blank lines and `#` comments skipped;
relative paths are relative to the list file's folder). A file named explicitly is taken whatever
its extension (a video by its extension, anything else as an image); inside folders and globs only
known extensions are. Each file is taken once, at its first mention.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from service.core.images import IMAGE_SUFFIXES

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".ts"})
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    path: Path  # absolute (not resolved: a symlink's own name is kept)
    name: PurePosixPath  # relative name for files written per source (labels/, annotated/)

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_EXTENSIONS

    @property
    def key(self) -> str:
        """How predictions.jsonl names the source."""
        return str(self.path)


@dataclass(frozen=True)
class Problem:
    spec: str
    message: str


def _known(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_EXTENSIONS


def _files_of(spec: str, base: Path, problems: list[Problem]) -> list[Path]:
    """The files one spec names (not a list file), sorted where it names several."""
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base / path
    if any(c in spec for c in GLOB_CHARACTERS):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in found if p.is_file() and _known(p)]
        if not files:
            problems.append(Problem(spec, "no image or video file matches"))
        return files
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _known(p))
        if not files:
            problems.append(Problem(spec, "no image or video file in this folder"))
        return files
    if path.is_file():
        return [path]
    problems.append(Problem(spec, "no such file or folder"))
    return []


def _list_file(spec: str, base: Path, problems: list[Problem]) -> list[Path]:
    path = Path(spec[1:]).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.append(Problem(spec, f"cannot read the list: {e}"))
        return []
    specs = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [f for item in specs for f in _files_of(item, path.parent, problems)]


def _names(paths: list[Path]) -> list[PurePosixPath]:
    """Each path relative to the folder all of them share (unique, as the paths are)."""
    if not paths:
        return []
    parents = [str(p.parent) for p in paths]
    root = Path(os.path.commonpath(parents))
    return [PurePosixPath(p.relative_to(root).as_posix()) for p in paths]


def expand(specs: list[str], base: Path | None = None) -> tuple[list[Source], list[Problem]]:
    """The files `specs` name, in order (each spec's own files sorted), each once; and the specs
    that named nothing readable. Relative specs are relative to `base` (default: the working folder)."""
    base = Path.cwd() if base is None else base
    problems: list[Problem] = []
    paths: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        found = _list_file(spec, base, problems) if spec.startswith("@") else _files_of(spec, base, problems)
        for path in found:
            absolute = Path(os.path.normpath(path.absolute()))  # "a/../b" and "./b": one file
            if absolute not in seen:
                seen.add(absolute)
                paths.append(absolute)
    return [Source(p, n) for p, n in zip(paths, _names(paths), strict=True)], problems
