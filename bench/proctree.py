"""A server's whole process tree, read from /proc (Linux): its CPU time and its memory, for servers
that fork workers, replicas or helpers (Ray starts a dozen processes), so that every server is
charged for all it runs.

Memory is the tree's PSS (proportional set size, /proc/PID/smaps_rollup): a page shared by k
processes counts 1/k in each, so forked workers sharing their parent's pages are not counted k
times, as summing their RSS would.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children, their children, ...), as they are now."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid`, and of its children that exited and were waited for."""
    fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICKS


def _pss_bytes(pid: int) -> int:
    for line in (_PROC / str(pid) / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


class ProcessTree:
    """CPU seconds and PSS of a process tree; `watch()` samples its peak PSS in a thread.

    CPU time: each process seen alive is remembered with its last reading, so a worker that exits
    between two readings keeps what it had used by the last one.
    """

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid, self.interval_s = pid, interval_s
        self._cpu: dict[int, float] = {}
        self._lock = threading.Lock()
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cpu_seconds(self) -> float:
        for p in descendants(self.pid):
            try:
                seconds = _cpu_seconds(p)
            except (OSError, ValueError, IndexError):
                continue
            with self._lock:
                self._cpu[p] = seconds
        with self._lock:
            return sum(self._cpu.values())

    def pss_bytes(self) -> int:
        total = 0
        for p in descendants(self.pid):
            try:
                total += _pss_bytes(p)
            except (OSError, ValueError):
                continue
        return total

    def watch(self) -> None:
        """Start sampling the peak PSS (and the CPU of short-lived workers) until `stop()`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="proctree", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self.pss_bytes())
            self.cpu_seconds()

    def stop(self) -> int:
        """Stop sampling; the peak PSS in bytes seen since `watch()`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return max(self._peak, self.pss_bytes())
