"""Facts about the host this process runs on, for the settings' defaults and the benchmarks' reports.
Needs nothing beyond the standard library (`yolor bench gpu` reads it on a GPU host without pydantic).
"""

from __future__ import annotations

import os


def host_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
