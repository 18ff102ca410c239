"""A peer's app started from its venv on a free loopback port, ready once it answers a detection,
and always ended with its whole process tree (Ray's daemons included)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.peers.registry import Peer
from bench.proctree import descendants
from bench.server import ServerFailed, free_port, log_tail

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PeerLayout:
    """How a peer is configured for a regime (bench/peers/work.py reads these as PEER_*)."""

    workers: int = 2
    threads: int = 1
    max_batch: int = 8
    max_delay_ms: float = 2.0
    standin_ms: float = 0.0

    def env(self) -> dict[str, str]:
        return {
            "PEER_WORKERS": str(self.workers),
            "PEER_THREADS": str(self.threads),
            "PEER_MAX_BATCH": str(self.max_batch),
            "PEER_MAX_DELAY_MS": f"{self.max_delay_ms:g}",
            "PEER_STANDIN_MS": f"{self.standin_ms:g}",
        }


@contextlib.contextmanager
def spawned_peer(
    peer: Peer,
    python: Path,
    model_dir: Path,
    layout: PeerLayout,
    probe: bytes,
    *,
    ready_timeout_s: float = 300,
) -> Iterator[tuple[str, int]]:
    """(detect URL, pid) of `peer` serving `model_dir`, ready when `probe` (a JPEG) is answered 200."""
    port = free_port()
    env = {
        **os.environ,
        **layout.env(),
        "PEER_MODEL_DIR": str(Path(model_dir).resolve()),
        "PEER_PORT": str(port),
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(python), str(peer.app)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}{peer.path}"
            _wait_ready(url, peer, process, log, probe, ready_timeout_s)
            yield url, process.pid
        finally:
            end_tree(process)


def end_tree(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM to the process group, SIGKILL to whatever of the tree is left after `grace_s`."""
    tree = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    for pid in set(_alive(tree)):  # a daemon that left the group (Ray's) is still below the app
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _alive(pids: list[int]) -> list[int]:
    return [p for pid in pids if Path(f"/proc/{pid}").exists() for p in descendants(pid)]


def _wait_ready(
    url: str, peer: Peer, process: subprocess.Popen[bytes], log: IO[bytes], probe: bytes, timeout_s: float
) -> None:
    content, content_type = peer.encode(probe)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"{peer.title} exited with {process.returncode}:\n{log_tail(log)}")
        request = urllib.request.Request(url, content, {"Content-Type": content_type})
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=10) as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise ServerFailed(f"{peer.title} not ready within {timeout_s:g} s:\n{log_tail(log)}")
