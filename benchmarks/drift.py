"""How much this machine's speed moves while nothing changes: one server, the same load, repeated.

    .venv/bin/python benchmarks/drift.py [WINDOWS] [CONCURRENCY]

Starts `yolor serve` with the demo model and measures WINDOWS (default 12) back-to-back 6-second
windows at CONCURRENCY (default 16) clients, printing images/s, the server's and the load
generator's CPU per image and the server's resident memory after each: a trend would be the server
degrading, scatter without a trend is the machine.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bench.images import sample_jpegs
from bench.serve import sweep
from bench.server import spawned_server
from service.settings import DEMO_MODEL_DIR


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    windows = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    level = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    jpegs = sample_jpegs()
    with spawned_server(DEMO_MODEL_DIR) as (url, pid):
        for i in range(windows):
            (r,) = asyncio.run(sweep(url, jpegs, [level], seconds=6, warmup_s=1))
            print(
                f"{i}: {r.images_per_s:.1f} images/s, "
                f"server CPU {r.server_cpu_ms_per_image or 0:.2f} ms/image, "
                f"client {r.client_cpu_ms_per_image or 0:.2f}, RSS {rss_kb(pid) // 1024} MiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
