"""Source specs expanded: folders recursively and sorted, globs, @list files, each file once, and
what names nothing reported instead of failing the run."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from predict.sources import expand


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_folders_recursively_sorted_with_known_extensions_only(tmp_path):
    _touch(tmp_path, "data/b.jpg", "data/a.PNG", "data/sub/c.mp4", "data/notes.txt", "data/sub/d.webp")
    sources, problems = expand(["data"], base=tmp_path)
    assert problems == []
    assert [s.path for s in sources] == [tmp_path / p for p in ("data/a.PNG", "data/b.jpg", "data/sub/c.mp4",
                                                                "data/sub/d.webp")]  # fmt: skip
    assert [str(s.name) for s in sources] == ["a.PNG", "b.jpg", "sub/c.mp4", "sub/d.webp"]
    assert [s.is_video for s in sources] == [False, False, True, False]


def test_globs_list_files_and_each_file_once_in_first_mention_order(tmp_path):
    _touch(tmp_path, "x/1.jpg", "x/2.jpg", "y/3.jpg", "y/clip.mov", "lists/z.jpg")
    (tmp_path / "lists" / "todo.txt").write_text("# wanted\n\nz.jpg\n../y/*.mov\n../x/1.jpg\n")
    sources, problems = expand(["x/2.jpg", "@lists/todo.txt", "x/*.jpg", "./x/2.jpg"], base=tmp_path)
    assert problems == []
    assert [s.path.relative_to(tmp_path).as_posix() for s in sources] == [
        "x/2.jpg", "lists/z.jpg", "y/clip.mov", "x/1.jpg"
    ]  # fmt: skip
    assert sources[0].name == PurePosixPath("x/2.jpg")  # relative to the folder they all share
    assert sources[2].is_video


def test_an_explicit_file_is_taken_whatever_its_extension(tmp_path):
    _touch(tmp_path, "scan.raw")
    sources, _ = expand(["scan.raw"], base=tmp_path)
    assert [(s.name, s.is_video) for s in sources] == [(PurePosixPath("scan.raw"), False)]


def test_what_names_nothing_is_reported(tmp_path):
    _touch(tmp_path, "ok.jpg", "empty/readme.md")
    sources, problems = expand(
        ["ok.jpg", "missing.jpg", "empty", "nothing/*.png", "@no-list.txt"], base=tmp_path
    )
    assert [s.path.name for s in sources] == ["ok.jpg"]
    assert [p.spec for p in problems] == ["missing.jpg", "empty", "nothing/*.png", "@no-list.txt"]
    assert problems[0].message == "no such file or folder"
