"""The machine a benchmark ran on, for its report: CPUs this process may use, the CPU model, Python.

Needs no pydantic: `yolor bench gpu` reports it on a GPU host without the server's packages.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from service.host import host_cpu_count


def host_info() -> dict[str, Any]:
    return {
        "cpus": host_cpu_count(),
        "processor": _cpu_model(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
