"""What tracing costs a real `yolor serve` of the demo model (ONNX Runtime on the CPU): the same load
on variants of the server side by side in one run, e.g. the commit before tracing existed, this tree
with tracing off (the default), and this tree tracing every request or 5% of them into an OTLP/HTTP
sink that this script runs (it answers every export and keeps nothing).

Each variant is a fresh server (`bench.variants`: `NAME[@REV][:VAR=VALUE,...]`; `{sink}` in a value
is the sink's URL). Closed-loop clients (`bench.load.closed_loop`, 640x480 JPEGs of the sample
photos) post to /detect at each concurrency in turn; per level: images/s, latency p50 / p99, and the
server's CPU time per image (user + system, from /proc: the most direct measure of a hot path's
cost). Variants alternate over `--rounds`; medians are printed and written to OUT/tracing.json and
OUT/tracing.md. Beside them, what the code tracing adds to a request's path costs when tracing is
off, timed directly (`off_path_us`): a served request's CPU varies by more than that.

    .venv/bin/python benchmarks/tracing.py --out benchmarks/results/cpu/tracing \\
        --variant before@dbea334 --variant off \\
        --variant 'on:YOLOR_TRACING=1,OTEL_EXPORTER_OTLP_ENDPOINT={sink}' \\
        --variant 'on-5%:YOLOR_TRACING=1,OTEL_EXPORTER_OTLP_ENDPOINT={sink},'\\
'OTEL_TRACES_SAMPLER=parentbased_traceidratio,OTEL_TRACES_SAMPLER_ARG=0.05'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import threading
import timeit
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.images import sample_jpegs
from bench.load import closed_loop
from bench.proctree import ProcessTree
from bench.stats import Latency
from bench.variants import Run, Variant, checkout, served


@contextlib.contextmanager
def otlp_sink() -> Iterator[tuple[str, dict[str, int]]]:
    """An OTLP/HTTP endpoint on 127.0.0.1 that answers every export with an empty success (its URL,
    and how many exports and bytes it took)."""
    seen = {"exports": 0, "bytes": 0}

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length", 0))
            self.rfile.read(size)
            seen["exports"] += 1
            seen["bytes"] += size
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


async def load(
    base_url: str, pid: int, levels: list[int], seconds: float, size: tuple[int, int]
) -> dict[str, Any]:
    import aiohttp

    jpegs, server, url = sample_jpegs(size), ProcessTree(pid), f"{base_url}/detect"
    out: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu: dict[str, float] = {}

        async def read_cpu(when: str) -> None:  # at the window's start and end
            cpu[when] = server.cpu_seconds()

        for level in levels:
            window = await closed_loop(
                session, url, jpegs, concurrency=level, seconds=seconds, warmup_s=1.0, on_window=read_cpu
            )
            used = cpu["end"] - cpu["start"]
            if window.errors:
                raise RuntimeError(f"errors at concurrency {level}: {dict(window.errors)}")
            latency = Latency.of(window.latencies)
            out[str(level)] = {
                "images_per_s": round(window.ok / window.seconds, 2),
                "p50_ms": round(latency.p50_ms, 2),
                "p99_ms": round(latency.p99_ms, 2),
                "cpu_ms_per_image": round(1000 * used / window.ok, 3),
            }
    return out


def off_path_us(repeat: int = 200_000) -> dict[str, float]:
    """Microseconds the tracing code adds when tracing is off: per request (the detector's, the
    metrics' and the request route's reads of the current trace) and per batch of 8 images (the
    batcher's look for traced images)."""
    import numpy as np

    from service.core.batch_runner import Item, Ran
    from service.core.batcher import DynamicBatcher
    from service.core.metrics import Metrics
    from service.tracing import exemplar, recording

    def per_request() -> None:
        recording(), exemplar(), exemplar()

    batcher = DynamicBatcher(
        lambda x: x, max_batch_size=8, max_delay_s=0.0, queue_size=8, metrics=Metrics().for_model("m", 1)
    )
    items = [Item(np.zeros(1), None, 0.0, 0.0, None) for _ in range(8)]  # type: ignore[arg-type]
    ran = Ran([None] * 8, 0.01, 8)

    def per_batch() -> None:
        batcher._batch_span(0.0, items, ran)

    return {
        "per_request": round(timeit.timeit(per_request, number=repeat) / repeat * 1e6, 3),
        "per_batch_of_8": round(timeit.timeit(per_batch, number=repeat) / repeat * 1e6, 3),
    }


def markdown(results: dict[str, list[dict[str, Any]]], levels: list[int]) -> str:
    keys = [
        ("images_per_s", "img/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("cpu_ms_per_image", "CPU ms/img"),
    ]
    head = "| variant | " + " | ".join(f"{label} c={c}" for c in levels for _, label in keys) + " |"
    lines = [head, "|" + "---|" * (1 + len(levels) * len(keys))]
    for name, rounds in results.items():
        cells = [
            f"{statistics.median(r[str(c)][key] for r in rounds):.{3 if key == 'cpu_ms_per_image' else 1}f}"
            for c in levels
            for key, _ in keys
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMedians over {len(next(iter(results.values())))} rounds.\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    Run.add_arguments(parser, levels="1,32", seconds=12.0, rounds=3)
    run = Run.of(parser.parse_args(), default="off")
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in run.variants}
    with contextlib.ExitStack() as stack:
        sink, seen = stack.enter_context(otlp_sink())
        trees = {v.name: stack.enter_context(checkout(v.revision)) for v in run.variants}
        for round_ in range(run.rounds):
            for variant in run.variants:
                env = {k: v.replace("{sink}", sink) for k, v in variant.env.items()}
                given = Variant(variant.name, variant.revision, env)
                with served(given, trees[variant.name]) as (base_url, pid):
                    result = asyncio.run(load(base_url, pid, run.levels, run.seconds, run.size))
                results[variant.name].append(result)
                print(f"round {round_ + 1} {variant.name}: {json.dumps(result)}", flush=True)
        print(f"the sink took {seen['exports']} exports, {seen['bytes'] / 1e6:.1f} MB", flush=True)
    off_path = off_path_us()
    table = markdown(results, run.levels)
    table += (
        f"\nThe code tracing adds, with tracing off: {off_path['per_request']} µs per request, "
        f"{off_path['per_batch_of_8']} µs per batch of 8 images.\n"
    )
    run.write("tracing", results, table, sink=seen, off_path_us=off_path)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
