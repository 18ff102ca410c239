"""The batcher's ready batch, measured where it matters: a backend that leaves the CPU free while it
runs (an accelerator), so every moment it waits for the next batch is lost throughput.

    .venv/bin/python benchmarks/ready_batch.py [--out DIR] [--batch-ms 40] [--rounds 4]

The server is the real one on the demo model's manifest with one stand-in backend
(`bench.standin`): each batch sleeps `--batch-ms` (the GIL released, as a GPU call releases it)
and answers no detections; one batch in flight, as the torch CUDA and
TensorRT backends run. Its ceiling is max batch / batch time images/s. Closed-loop clients (the
`yolor bench serve` load, one 640x480 JPEG per request) at 4 x max batch, against the server as it
serves an accelerator (a lookahead of one batch: the ready batch, post-processing beside the next
batch) and as it serves a CPU backend (no lookahead: a batch formed only once the worker is free,
post-processed in its turn), alternating. Also measures, in each server, how long the worker
waited between two full batches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
from pathlib import Path
from typing import Any

from bench.images import sample_jpegs
from bench.serve import sweep
from bench.server import spawned_server
from bench.standin import standin_command

MODEL = Path("service/demo_model")


def gaps_ms(url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{url}/bench/gaps") as answer:
        gaps = json.loads(answer.read())
    return 1000 * statistics.mean(gaps) if gaps else float("nan")


def measure(batch_ms: float, rounds: int, seconds: float, concurrency: int) -> list[dict[str, Any]]:
    jpegs = sample_jpegs()
    runs = []
    for r in range(rounds):
        for ready in (True, False) if r % 2 == 0 else (False, True):
            command = standin_command(MODEL, batch_ms, ready)
            with spawned_server(MODEL, {"YOLOR_MAX_BATCH_SIZE": "8"}, command=command) as (url, _):
                (result,) = asyncio.run(sweep(url, jpegs, [concurrency], seconds=seconds, warmup_s=2))
                runs.append(
                    {
                        "round": r,
                        "ready_batch": ready,
                        "images_per_s": result.images_per_s,
                        "p50_ms": result.latency.p50_ms if result.latency else None,
                        "mean_batch": result.mean_batch,
                        "gap_ms": gaps_ms(url),
                        "errors": result.errors,
                    }
                )
            print(json.dumps(runs[-1]), flush=True)
    return runs


def report(runs: list[dict[str, Any]], batch_ms: float, concurrency: int) -> str:
    ceiling = 8 / (batch_ms / 1000)
    lines = [
        f"Backend: one batch of 8 in flight, {batch_ms:g} ms per batch (ceiling {ceiling:.1f} images/s); "
        f"{concurrency} closed-loop clients.",
        "",
        "| round | ready batch | images/s | / ceiling | p50 ms | mean batch | backend idle ms |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['round']} | {'on' if run['ready_batch'] else 'off'} | {run['images_per_s']:.1f} | "
            f"{run['images_per_s'] / ceiling:.3f} | {run['p50_ms']:.1f} | {run['mean_batch']:.2f} | "
            f"{run['gap_ms']:.2f} |"
        )
    ratios = []
    for r in sorted({run["round"] for run in runs}):
        on, off = (next(x for x in runs if x["round"] == r and x["ready_batch"] is v) for v in (True, False))
        ratios.append(on["images_per_s"] / off["images_per_s"])
    lines += [
        "",
        f"on / off images/s per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"median {statistics.median(ratios):.3f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-ms", type=float, default=40.0, help="backend time per batch (default 40)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per server")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = measure(args.batch_ms, args.rounds, args.seconds, args.concurrency)
    text = report(runs, args.batch_ms, args.concurrency)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ready_batch.json").write_text(json.dumps(runs, indent=1))
        (args.out / "ready_batch.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
