"""Which GPU this machine has, as TensorRT engines care about it: its name and compute capability.

A TensorRT engine and its timing cache are only valid on the GPU model (and TensorRT version) they
were built on, so both are recorded in the engine manifest. `nvidia-smi` is asked rather than a CUDA
binding because it ships with every driver and needs no extra Python package.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

__all__ = ["gpu_identity", "parse_nvidia_smi"]

_log = logging.getLogger(__name__)

_COMPUTE_CAP = re.compile(r"\d+\.\d+")


def parse_nvidia_smi(text: str) -> tuple[str, str]:
    """Parse `nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader` output.

    Returns (name, compute capability) of the first GPU listed, e.g. ("NVIDIA H200", "9.0").
    Raises ValueError when the text holds no such line (empty output, an error message, "[N/A]").
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("nvidia-smi printed nothing")
    # The name may itself contain commas in principle; the capability never does.
    name, sep, cap = lines[0].rpartition(",")
    name, cap = name.strip(), cap.strip()
    if not sep or not name or not _COMPUTE_CAP.fullmatch(cap):
        raise ValueError(f"unexpected nvidia-smi output: {lines[0]!r}")
    return name, cap


def gpu_identity(index: int = 0, timeout_s: float = 10.0) -> tuple[str, str] | None:
    """(name, compute capability) of GPU `index`, or None when no GPU can be seen.

    None covers: nvidia-smi not on PATH, nvidia-smi failing (no driver, no such GPU, a driver too old
    to know `compute_cap`), hanging past `timeout_s`, or printing something unparseable.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        _log.debug("nvidia-smi is not on PATH")
        return None
    cmd = [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", str(index)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        _log.info("nvidia-smi could not be run: %s", exc)
        return None
    if out.returncode != 0:
        _log.info("nvidia-smi exited with %d: %s", out.returncode, (out.stderr or out.stdout).strip())
        return None
    try:
        return parse_nvidia_smi(out.stdout)
    except ValueError as exc:
        _log.info("%s", exc)
        return None
