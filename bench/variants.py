"""Variants of one server measured side by side in one run: `NAME[@REV][:VAR=VALUE,...]` is the
environment variables of its server and, with `@REV`, the server of that git revision (its tree
exported by `git archive` into a temporary folder and run from there): a change beside the commit
before it, or a setting on and off. The benchmarks alternate the variants over their rounds, so that
the machine's drift hits each alike (benchmarks/memory.py, benchmarks/tracing.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.host import host_info
from bench.server import spawned_server
from service.settings import DEMO_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    name: str
    revision: str | None = None  # None: this working tree
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        head, _, assignments = text.partition(":")
        name, _, revision = head.partition("@")
        env = dict(a.split("=", 1) for a in assignments.split(",") if a)
        return cls(name, revision or None, env)


def resolve(revision: str) -> str:
    """The commit `revision` names, abbreviated (a record must not say HEAD~1)."""
    out = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or revision


def this_tree() -> str:
    """This working tree's commit, and whether it has uncommitted changes."""
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True).stdout
    return resolve("HEAD") + (" + uncommitted changes" if dirty else "")


@contextlib.contextmanager
def checkout(revision: str | None) -> Iterator[Path | None]:
    """The tree of `revision` in a temporary folder (None: this working tree, no copy)."""
    if revision is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="yolor-variant-") as folder:
        archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        yield Path(folder)


@contextlib.contextmanager
def served(
    variant: Variant, tree: Path | None, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of the demo model served by `variant` (from `tree`, its checkout), with its
    environment over `env`."""
    environment, command = {**(env or {}), **variant.env}, None
    if tree is not None:
        environment["PYTHONPATH"] = str(tree)
        command = [sys.executable, "-m", "cli", "serve", "--model", str(tree / "service" / "demo_model")]
    with spawned_server(DEMO_MODEL_DIR, environment, command=command, cwd=tree) as server:
        yield server


@dataclass(frozen=True)
class Run:
    """A side-by-side run's command line: where it writes, its variants (each with its checked-out
    revision's commit), the client concurrencies in turn, seconds per level, rounds, image size."""

    out: Path
    variants: list[Variant]
    revisions: dict[str | None, str]
    levels: list[int]
    seconds: float
    rounds: int
    size: tuple[int, int]

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, *, levels: str, seconds: float, rounds: int) -> None:
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--variant", action="append", default=[], help="NAME[@REV][:VAR=VALUE,...]")
        parser.add_argument("--levels", default=levels, help="client concurrencies, in turn")
        parser.add_argument("--seconds", type=float, default=seconds, help="per level")
        parser.add_argument("--rounds", type=int, default=rounds)
        parser.add_argument("--image-size", default="640x480", help="WxH of the sample JPEGs posted")

    @classmethod
    def of(cls, args: argparse.Namespace, default: str) -> Run:
        variants = [Variant.parse(v) for v in args.variant or [default]]
        width, height = (int(v) for v in args.image_size.split("x"))
        return cls(
            args.out,
            variants,
            {v.revision: resolve(v.revision) for v in variants if v.revision},
            [int(c) for c in args.levels.split(",")],
            args.seconds,
            args.rounds,
            (width, height),
        )

    def write(self, stem: str, results: dict[str, Any], table: str, **extra: Any) -> None:
        """OUT/<stem>.json (the command, host, settings, variants, `extra`, results) and OUT/<stem>.md
        (the command, which commit each variant ran, `table`)."""
        self.out.mkdir(parents=True, exist_ok=True)
        tree = this_tree()
        record = {
            "command": " ".join(sys.argv),
            "host": host_info(),
            "levels": self.levels,
            "seconds": self.seconds,
            "image_size": list(self.size),
            "variants": {
                v.name: {"revision": self.revisions.get(v.revision), "env": v.env} for v in self.variants
            },
            "this_tree": tree,
            **extra,
            "results": results,
        }
        (self.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        trees = ", ".join(f"{v.name} = {self.revisions.get(v.revision, tree)}" for v in self.variants)
        (self.out / f"{stem}.md").write_text(f"`{record['command']}`\n\n{trees}\n\n{table}")
