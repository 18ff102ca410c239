"""Resident memory of a real `yolor serve` of the demo model (ONNX Runtime on the CPU) at rest and
under a soak, for one or more variants of its environment, measured side by side in one run.

Each variant is a fresh server (`bench.server.spawned_server`). Its VmRSS is read when it is ready,
then sampled every 50 ms while closed-loop clients (`bench.load.closed_loop`, 640x480 JPEGs of the
sample photos) post to /detect at each concurrency in turn, and once more after a few idle seconds
at the end. Printed and written to OUT/memory.json and OUT/memory.md: per variant and round, the
RSS when ready, the peak during the soak (VmHWM), the RSS after it, and images/s per level.
Variants (`bench.variants`: `NAME[@REV][:VAR=VALUE,...]`) alternate over `--rounds`.

    .venv/bin/python benchmarks/memory.py --out benchmarks/results/cpu/memory \\
        --variant before@HEAD~1 --variant after --variant 'after-arena2:MALLOC_ARENA_MAX=2'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.images import sample_jpegs
from bench.load import closed_loop
from bench.variants import Run, Variant, checkout, served


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


async def soak(base_url: str, levels: list[int], seconds: float, size: tuple[int, int]) -> dict[str, float]:
    import aiohttp

    jpegs = sample_jpegs(size)
    rates = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for level in levels:
            window = await closed_loop(
                session, f"{base_url}/detect", jpegs, concurrency=level, seconds=seconds, warmup_s=1.0
            )
            if window.errors:
                raise RuntimeError(f"errors at concurrency {level}: {dict(window.errors)}")
            rates[str(level)] = len(window.latencies) / window.seconds
    return rates


def measure(
    variant: Variant, tree: Path | None, levels: list[int], seconds: float, size: tuple[int, int]
) -> dict[str, Any]:
    with served(variant, tree) as (base_url, pid):
        ready_mb = status_kb(pid, "VmRSS") / 1024
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(status_kb(pid, "VmRSS") / 1024)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rates = asyncio.run(soak(base_url, levels, seconds, size))
        finally:
            stop.set()
            sampler.join()
        time.sleep(3.0)
        return {
            "ready_mb": round(ready_mb, 1),
            "peak_mb": round(status_kb(pid, "VmHWM") / 1024, 1),
            "after_mb": round(status_kb(pid, "VmRSS") / 1024, 1),
            "threads": status_kb(pid, "Threads"),
            "images_per_s": {k: round(v, 1) for k, v in rates.items()},
        }


def markdown(results: dict[str, list[dict[str, Any]]], levels: list[int]) -> str:
    head = "| variant | ready MB | peak MB | after MB | " + " | ".join(f"img/s c={c}" for c in levels) + " |"
    lines = [head, "|" + "---|" * (4 + len(levels))]
    for name, rounds in results.items():

        def med(key: str, rounds: list[dict[str, Any]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        speed = [statistics.median(r["images_per_s"][str(c)] for r in rounds) for c in levels]
        lines.append(
            f"| {name} | {med('ready_mb'):.0f} | {med('peak_mb'):.0f} | {med('after_mb'):.0f} | "
            + " | ".join(f"{s:.1f}" for s in speed)
            + " |"
        )
    return "\n".join(lines) + f"\n\nMedians over {len(next(iter(results.values())))} rounds.\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    Run.add_arguments(parser, levels="1,32,64", seconds=20.0, rounds=2)
    run = Run.of(parser.parse_args(), default="base")
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in run.variants}
    with contextlib.ExitStack() as stack:
        trees = {v.name: stack.enter_context(checkout(v.revision)) for v in run.variants}
        for round_ in range(run.rounds):
            for variant in run.variants:
                result = measure(variant, trees[variant.name], run.levels, run.seconds, run.size)
                results[variant.name].append(result)
                print(f"round {round_ + 1} {variant.name}: {json.dumps(result)}", flush=True)
    table = markdown(results, run.levels)
    run.write("memory", results, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
