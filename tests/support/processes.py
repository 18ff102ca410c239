"""Real processes for tests: a free port, a process that is always ended, waiting for a URL to answer."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.server import end_process


@contextlib.contextmanager
def started_process(command: list[str], log: Path, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A process (output to `log`) that is always ended (SIGTERM, then SIGKILL after 30 s) on exit."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, **popen)
        try:
            yield process
        finally:
            end_process(process)


def wait_until_ok(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Until `url` answers 200; fails with the end of `log` if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"{process.args} exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"{url} not ready within {timeout_s}s:\n{log.read_text(errors='replace')[-4000:]}")
