"""Each peer's own venv, made on first use under `.venv/cache/peers/<name>` (a peer is never a
dependency of the project): the peer's pinned requirements, and the packages the shared work
imports at the versions this project runs (so both sides run the same ONNX Runtime, OpenCV, numpy
and pydantic). A venv is remade when its requirement list changes.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from bench.peers.registry import Peer

log = logging.getLogger(__name__)

WORK_PACKAGES = ("numpy", "onnxruntime", "opencv-python-headless", "pydantic")
CACHE = Path(".venv/cache/peers")


def requirements(peer: Peer) -> list[str]:
    return [*peer.requirements, *(f"{name}=={version(name)}" for name in WORK_PACKAGES)]


def peer_python(peer: Peer, cache: Path = CACHE) -> Path:
    """The python of `peer`'s venv, installing it first if it is missing or out of date."""
    root = cache / peer.name
    python, stamp = root / "bin" / "python", root / "requirements.txt"
    wanted = "\n".join(requirements(peer)) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log.warning("installing %s into %s (once; a minute or two)", peer.title, root)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *requirements(peer)], check=True)
    stamp.write_text(wanted)
    return python
