"""Where a served image's CPU time goes, per server thread: a one-off probe behind docs/benchmarks.md.

    .venv/bin/pip install py-spy; .venv/bin/python benchmarks/thread_cpu.py [MODEL_DIR] [CONCURRENCY]

Starts `yolor serve` for MODEL_DIR (default the demo model), loads it with the sample photos at
CONCURRENCY (default 32) closed-loop clients for 8 s, and divides each server thread's CPU time
(/proc/PID/task/TID/stat) by the images answered. Thread names come from one `py-spy dump` (Linux
thread names are not Python's): yolor-infer (ONNX Runtime runs, one intra-op thread each),
yolor-pre (decode + letterbox + post-processing pool), MainThread (the event loop: HTTP, FastAPI,
JSON, hand-offs between threads).
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.images import sample_jpegs
from bench.serve import sweep
from bench.server import spawned_server


def thread_names(pid: int) -> dict[int, str]:
    dump = subprocess.run(
        ["py-spy", "dump", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout
    return {
        int(m[1]): re.sub(r"_\d+$", "", m[2]) for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump)
    }


def cpu_by_thread(pid: int, names: dict[int, str]) -> collections.Counter[str]:
    ticks = os.sysconf("SC_CLK_TCK")
    out: collections.Counter[str] = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended
            continue
        out[names.get(int(tid), f"native:{comm}")] += (int(fields[11]) + int(fields[12])) / ticks
    return out


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("service/demo_model")
    level = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    jpegs = sample_jpegs()
    with spawned_server(model) as (url, pid):
        asyncio.run(sweep(url, jpegs, [level], seconds=2, warmup_s=1))  # warm, and every thread exists
        names = thread_names(pid)
        before = cpu_by_thread(pid, names)
        (result,) = asyncio.run(sweep(url, jpegs, [level], seconds=8, warmup_s=0))
        after = cpu_by_thread(pid, names)
    images = result.requests
    print(f"{result.images_per_s:.1f} images/s at concurrency {level}; server CPU ms per image:")
    for name in sorted(after, key=lambda n: before[n] - after[n]):
        if after[name] > before[name]:
            print(f"  {name:20s} {(after[name] - before[name]) * 1000 / images:6.2f}")
    print(f"  {'total':20s} {(sum(after.values()) - sum(before.values())) * 1000 / images:6.2f}")


if __name__ == "__main__":
    main()
