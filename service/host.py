"""Facts about the host this process runs on, for the settings' defaults and the benchmarks' reports.
Needs nothing beyond the standard library (`yolor bench gpu` reads it on a GPU host without pydantic).
"""

from __future__ import annotations

import os
from pathlib import Path


def host_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resident_mb(pid: int | str = "self") -> float:
    """The process's resident memory (VmRSS) in MB; 0.0 where /proc is not there (not Linux)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
