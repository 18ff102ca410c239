"""`yolor bench bare MODEL_DIR`: throughput and latency of the backend per batch size (no torch)."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

from cli.arguments import int_at_least, positive_float
from cli.errors import CommandError, settings_problems
from cli.serve_command import BACKENDS

log = logging.getLogger("yolor")


def _load(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """(manifest, backend, largest batch) as `yolor serve` would load them with these options."""
    from pydantic import ValidationError

    from service.backends import load_checked_backend
    from service.manifest import load_manifest
    from service.settings import Settings

    values: dict[str, Any] = {"model_dir": args.model, "backend": args.backend, "device": args.device}
    values |= {"precision": args.precision, "onnx_intra_op_threads": args.threads}
    if args.max_batch is not None:
        values["max_batch_size"] = args.max_batch
    try:
        settings = Settings(**values)
    except ValidationError as e:
        raise CommandError(f"invalid settings: {settings_problems(e)}") from None
    manifest = load_manifest(settings.model_dir)
    backend, max_batch = load_checked_backend(settings, manifest)
    return manifest, backend, max_batch


def _cmd_bare(args: argparse.Namespace) -> int:
    from bench.bare import batch_sizes, bench_bare, markdown_table
    from service.settings import host_cpu_count

    manifest, backend, max_batch = _load(args)
    sizes = batch_sizes(max_batch)
    log.info("%s %d px on %r; batch sizes %s, >= %g s each", manifest.arch, manifest.input_size, backend,
             sizes, args.seconds)  # fmt: skip
    try:
        results = bench_bare(
            backend,
            sizes,
            min_seconds=args.seconds,
            progress=lambda r: log.info("batch %d: %.1f images/s", r.batch_size, r.images_per_s),
        )
    finally:
        backend.close()
    sys.stdout.write(markdown_table(results))
    if args.json is not None:
        host = {"cpus": host_cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
        report = {
            "model": {"dir": str(args.model), "arch": manifest.arch, "input_size": manifest.input_size},
            "backend": {"name": backend.name, "precision": backend.precision, "device": backend.device},
            "host": host,
            "results": [r.to_dict() for r in results],
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure throughput and latency")
    bench = p.add_subparsers(dest="bench_command", required=True)
    q = bench.add_parser(
        "bare",
        help="the backend alone: images/s and latency per batch size",
        description="Loads the model directory as `yolor serve` does (same backend choice, precision, "
        "threads, batch limit) and runs batches of 1, 2, 4, ... up to the largest the server forms, "
        "after a warm-up. Prints a Markdown table; --json writes the numbers.",
    )
    q.add_argument("model", type=Path, help="model directory (model.json + artifacts)")
    q.add_argument("--backend", choices=BACKENDS, default="auto")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    q.add_argument("--precision", choices=("auto", "fp32", "fp16"), default="auto")
    q.add_argument("--threads", type=int_at_least(0), default=0, help="ONNX Runtime threads (0: all usable)")
    q.add_argument("--max-batch", type=int_at_least(1), help="largest batch (default: as the server)")
    q.add_argument("--seconds", type=positive_float, default=2.0, help="measured time per batch size")
    q.add_argument("--json", help="write the results to this file")
    q.set_defaults(func=_cmd_bare)
