"""A `yolor serve` of its own for a benchmark: a subprocess on a free loopback port, always ended.

Settings reach it as `YOLOR_*` variables, as they reach any server (`overrides` win over the
caller's environment), so batching on and off are two servers of the same model that differ only
in `YOLOR_MAX_BATCH_SIZE` / `YOLOR_MAX_DELAY_MS`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO


class ServerFailed(RuntimeError):
    """The benchmark's server exited or did not get ready; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawned_server(
    model_dir: Path,
    overrides: dict[str, str] | None = None,
    *,
    ready_timeout_s: float = 300.0,
    command: Sequence[str] | None = None,
    cwd: Path | None = None,
) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of a ready `yolor serve --model model_dir`; SIGTERM (then SIGKILL) on exit.

    `command` runs another server in its place, one that reads YOLOR_HOST and YOLOR_PORT (a
    benchmark's own app, e.g.); `cwd` is where it starts (`python -m cli` imports from there)."""
    port = free_port()
    env = {**os.environ, **(overrides or {}), "YOLOR_HOST": "127.0.0.1", "YOLOR_PORT": str(port)}
    env["YOLOR_LOG_LEVEL"] = env.get("YOLOR_LOG_LEVEL", "WARNING")
    if command is None:
        command = [sys.executable, "-m", "cli", "serve", "--model", str(model_dir)]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_ready(base_url, process, log, ready_timeout_s)
            yield base_url, process.pid
        finally:
            end_process(process)


def end_process(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `grace_s`; returns once it has exited."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], log: IO[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"yolor serve exited with {process.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise ServerFailed(f"yolor serve not ready within {timeout_s:g} s:\n{log_tail(log)}")


def log_tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]
