"""`yolor bench bare|serve|torch|gpu`: throughput and latency of the backend alone, of the whole
service, of the eager PyTorch forward beside our export, and of the torch backend on one CUDA GPU
(only `torch` and `gpu` import torch, when they run; `gpu` needs neither pydantic nor FastAPI)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cli.arguments import int_at_least, non_negative_float, positive_float, positive_int_list
from cli.errors import CommandError, settings_problems
from cli.serve_command import BACKENDS

log = logging.getLogger("yolor")


def _settings_values(args: argparse.Namespace) -> dict[str, Any]:
    """Settings fields for the options given (None: not given, the server's default or YOLOR_* applies)."""
    given = {
        "backend": args.backend,
        "device": args.device,
        "precision": args.precision,
        "onnx_intra_op_threads": args.threads,
        "onnx_parallel_runs": args.parallel_runs,
        "max_batch_size": args.max_batch,
    }
    return {name: value for name, value in given.items() if value is not None}


def _checked_settings(model_dir: Path, values: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(model_dir=model_dir, **values)
    except ValidationError as e:
        raise CommandError(f"invalid settings: {settings_problems(e)}") from None


def _write(out: Path | None, name: str, report: dict[str, Any], markdown: str) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    log.info("wrote %s/%s.json and %s.md", out, name, name)


def _cmd_bare(args: argparse.Namespace) -> int:
    from bench.bare import batch_sizes, bench_bare, load_backend, markdown_table
    from bench.host import host_info

    settings = _checked_settings(args.model, _settings_values(args))
    if args.against is not None:
        return _compare_precisions(args, settings)
    manifest, backend, max_batch = load_backend(settings)
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
    table = markdown_table(results)
    sys.stdout.write(table)
    report = {
        "model": {"dir": str(args.model), "arch": manifest.arch, "input_size": manifest.input_size},
        "backend": {"name": backend.name, "precision": backend.precision, "device": backend.device},
        "host": host_info(),
        "results": [r.to_dict() for r in results],
    }
    _write(args.out, "bare", report, table)
    return 0


def _compare_precisions(args: argparse.Namespace, settings: Any) -> int:
    """`yolor bench bare --against P`: each batch size on the configured precision, then on P."""
    from bench.bare import batch_sizes, compare_precisions, load_backend, precision_table
    from bench.host import host_info

    manifest, base, max_batch = load_backend(settings)
    try:
        _, other, other_max = load_backend(settings.model_copy(update={"precision": args.against}))
    except BaseException:
        base.close()
        raise
    try:
        sizes = batch_sizes(min(max_batch, other_max))
        log.info("%s %d px: %r against %r; batch sizes %s, >= %g s each", manifest.arch,
                 manifest.input_size, base, other, sizes, args.seconds)  # fmt: skip

        def progress(p: Any) -> None:
            log.info("batch %d: %s / %s latency %.3f", p.batch_size, other.precision, base.precision,
                     p.latency_ratio)  # fmt: skip

        pairs = compare_precisions(base, other, sizes, min_seconds=args.seconds, progress=progress)
    finally:
        base.close()
        other.close()
    table = precision_table(pairs, base.precision, other.precision)
    sys.stdout.write(table)
    report = {
        "model": {"dir": str(args.model), "arch": manifest.arch, "input_size": manifest.input_size},
        "base": {"name": base.name, "precision": base.precision, "device": base.device},
        "other": {"name": other.name, "precision": other.precision, "device": other.device},
        "host": host_info(),
        "results": [p.to_dict() for p in pairs],
    }
    _write(args.out, f"bare-{other.precision}-vs-{base.precision}", report, table)
    return 0


def _server_env(values: dict[str, Any]) -> dict[str, str]:
    return {f"YOLOR_{name.upper()}": str(value) for name, value in values.items()}


def _require(modules: list[str], extra: str) -> None:
    """CommandError naming the extra to install when a module the command needs is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CommandError(f"needs {', '.join(missing)}: pip install 'yolor-serving[{extra}]'")


def _cmd_serve(args: argparse.Namespace) -> int:
    _require(
        ["aiohttp", "tqdm"] + ([] if args.images else ["skimage"]) + (["matplotlib"] if args.out else []),
        "bench",
    )
    from bench import serve_report
    from bench.images import load_images, sample_jpegs
    from bench.plots import plot_serve
    from bench.serve import markdown_table
    from bench.server import ServerFailed
    from service.settings import DEMO_MODEL_DIR

    if args.unbatched and args.url:
        raise CommandError("--unbatched starts its own servers: give --model, not a URL")
    model_dir = args.model if args.model is not None or args.url else DEMO_MODEL_DIR
    values = _settings_values(args)
    settings = _checked_settings(model_dir, values) if model_dir is not None else None
    try:
        jpegs = load_images(args.images) if args.images else sample_jpegs()
    except (OSError, ValueError) as e:
        raise CommandError(str(e)) from None
    config = serve_report.ServeBenchConfig(
        jpegs=jpegs,
        url=args.url,
        model_dir=model_dir,
        server_env=_server_env(values),
        settings=settings,
        levels=args.concurrency,
        seconds=args.seconds,
        warmup_s=args.warmup,
        bare_seconds=args.bare_seconds,
        unbatched=args.unbatched,
        rounds=args.rounds,
        round_seconds=args.round_seconds,
        headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {},
    )
    progress = _Progress()
    try:
        report = serve_report.run(config, progress=progress)
    except ServerFailed as e:
        raise CommandError(str(e)) from None
    finally:
        progress.close()
    text = "".join(f"\n{s.name}:\n\n{markdown_table(s.results)}" for s in report.sweeps)
    if report.comparison is not None:
        text += "\n" + "\n".join(report.comparison.lines()) + "\n"
    sys.stdout.write(text)
    _write(args.out, "serve", report.to_dict(), text.lstrip("\n"))
    if args.out is not None:
        plot_serve(report, args.out / "serve.png")
        log.info("wrote %s/serve.png", args.out)
    return 0


def _cmd_torch(args: argparse.Namespace) -> int:
    _require(["torch", "onnx", "onnxscript"], "export")
    import yolor
    from bench.eager import compare
    from bench.host import host_info
    from service.host import host_cpu_count

    if args.checkpoint is None and args.arch is None:
        raise CommandError(
            "give a CHECKPOINT, or --arch NAME for random weights (speed does not depend on them)"
        )
    if args.checkpoint is not None:
        model = yolor.load_model(args.checkpoint, arch=args.arch)
    else:
        model = yolor.build_model(args.arch, nc=80)
        log.info("%s with random weights, 80 classes", args.arch)
    size = args.img_size or model.input_size
    threads = args.threads or host_cpu_count()
    log.info("%s at %d px on %d threads; batch sizes %s, >= %g s each", model.arch, size, threads,
             args.batch, args.seconds)  # fmt: skip
    result = compare(
        model,
        input_size=size,
        batch_sizes=args.batch,
        threads=threads,
        min_seconds=args.seconds,
        progress=lambda name, r: log.info("%s batch %d: %.2f images/s", name, r.batch_size, r.images_per_s),
    )
    table = result.markdown()
    sys.stdout.write(table)
    _write(args.out, "torch", {"host": host_info(), **result.to_dict()}, table)
    return 0


def _cmd_gpu(args: argparse.Namespace) -> int:
    if args.model_dir:
        if args.workdir is None:
            raise CommandError("--model-dir writes into --workdir: give one (a temporary one is deleted)")
        try:  # model.json is written through the manifest's pydantic model
            importlib.import_module("pydantic")
        except ImportError:
            raise CommandError("--model-dir needs pydantic: pip install 'yolor-serving[serve]'") from None
    try:
        import torch
    except ImportError:
        raise CommandError("needs torch: pip install 'yolor-serving[model]'") from None
    if not torch.cuda.is_available():
        raise CommandError(f"no CUDA GPU visible to torch {torch.__version__}: nothing to measure")
    from bench.gpu import GpuBenchConfig, run_gpu_bench
    from bench.gpu_report import markdown

    config = GpuBenchConfig(
        arch=args.arch,
        also=args.also,
        size=args.size,
        batches=tuple(args.batches),
        max_batch=args.max_batch,
        min_calls=args.min_calls,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        budget_s=args.budget_s,
        compile=args.compile,
        workdir=args.workdir,
        model_dir=args.model_dir,
        out=args.out,
    )
    report = run_gpu_bench(config)
    sys.stdout.write("\n" + markdown(report.data))
    log.info("wrote %s/gpu-bench.json and gpu-bench.md", args.out)
    if not report.completed("model"):  # what was recorded is written; nothing was measured
        model = report.stages.get("model", {})
        log.error("error: no model to measure: %s", model.get("error") or model.get("skipped"))
        return 1
    return 0


class _Progress:
    """A tqdm bar per concurrency level, over its measured seconds (on stderr, beside the log)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._level: int | None = None

    def __call__(self, level: int, seconds: float) -> None:
        from tqdm import tqdm

        if level != self._level:
            self.close()
            self._level = level
            # disable=None: no bar unless stderr is a terminal (a log file would get every refresh)
            self._bar = tqdm(total=None, desc=f"concurrency {level}", unit="s", leave=False, disable=None,
                             bar_format="{desc}: {n:.0f} s measured")  # fmt: skip
        self._bar.n = seconds
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _backend_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--backend", choices=BACKENDS, default=None, help="runtime (default: as yolor serve)")
    q.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    q.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"), default=None)
    q.add_argument(
        "--threads", type=int_at_least(0), default=None, help="ONNX Runtime threads per run (0: auto)"
    )
    q.add_argument(
        "--parallel-runs", type=int_at_least(0), default=None, help="CPU: runs per batch (0: auto)"
    )
    q.add_argument("--max-batch", type=int_at_least(1), help="largest batch (default: as the server)")
    q.add_argument("--out", type=Path, help="write JSON and Markdown (serve: also a PNG plot) here")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure throughput and latency")
    bench = p.add_subparsers(dest="bench_command", required=True)
    q = bench.add_parser(
        "bare",
        help="the backend alone: images/s and latency per batch size",
        description="Loads the model directory as `yolor serve` does (same backend choice, precision, "
        "threads, batch limit) and runs batches of 1, 2, 4, ... up to the largest the server forms, "
        "after a warm-up. Prints a Markdown table.",
    )
    q.add_argument("model", type=Path, help="model directory (model.json + artifacts)")
    _backend_options(q)
    q.add_argument("--seconds", type=positive_float, default=2.0, help="measured time per batch size")
    q.add_argument(
        "--against",
        choices=("fp32", "fp16", "int8"),
        help="also run this precision, each batch size right after the first: prints its latency ratio",
    )
    q.set_defaults(func=_cmd_bare)

    s = bench.add_parser(
        "serve",
        help="the whole service over HTTP: a closed-loop load per concurrency",
        description="Without URL, starts `yolor serve` for --model (default: the demo model) on a free "
        "loopback port. Measures the bare backend and the decode/letterbox cost first (when the model "
        "directory is known), then sweeps concurrency 1, 2, 4, ... 4 x max batch with one JPEG per "
        "POST /detect, and prints the served/bare and served/CPU-limit ratios.",
    )
    s.add_argument("url", nargs="?", help="a running server, e.g. http://127.0.0.1:8000 (default: start one)")
    s.add_argument("--model", type=Path, help="model directory (with a URL: the one it serves, for bare)")
    s.add_argument("--images", type=Path, nargs="+", help="JPEG files or folders (default: 6 sample photos)")
    s.add_argument(
        "--concurrency", type=positive_int_list, help="e.g. 1,4,16 (default 1, 2, 4, ... 4 x max batch)"
    )
    s.add_argument("--seconds", type=positive_float, default=10.0, help="measured time per level")
    s.add_argument("--warmup", type=non_negative_float, default=2.0, help="unmeasured seconds per level")
    s.add_argument(
        "--bare-seconds", type=positive_float, default=3.0, help="measured time per bare batch size"
    )
    s.add_argument("--rounds", type=int_at_least(0), default=3, help="side-by-side rounds for the ratios")
    s.add_argument("--round-seconds", type=positive_float, default=5.0, help="each side of a round")
    s.add_argument("--unbatched", action="store_true", help="also sweep a server with max batch 1, no delay")
    s.add_argument("--api-key", help="sent as a Bearer token")
    _backend_options(s)
    s.set_defaults(func=_cmd_serve)

    t = bench.add_parser(
        "torch",
        help="the eager PyTorch forward beside our fused ONNX export (needs torch)",
        description="Runs the same net three ways per batch size on the same CPU threads: eager and "
        "unfused (as the official detect.py), fused eager, and the fused ONNX export through ONNX "
        "Runtime; prints images/s, p50 latency and the speed-up.",
    )
    t.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint (or --arch for random weights)")
    t.add_argument("--arch", help="with a checkpoint: override detection; alone: random weights")
    t.add_argument("--img-size", type=int_at_least(32), help="input size (default: the checkpoint's)")
    t.add_argument("--batch", type=positive_int_list, default=[1], help="batch sizes, e.g. 1,4 (default 1)")
    t.add_argument("--threads", type=int_at_least(0), default=0, help="CPU threads (0: all usable)")
    t.add_argument("--seconds", type=positive_float, default=3.0, help="measured time per runner and size")
    t.add_argument("--out", type=Path, help="write torch.json and torch.md here")
    t.set_defaults(func=_cmd_torch)

    g = bench.add_parser(
        "gpu",
        help="the torch backend on one CUDA GPU beside eager PyTorch (needs torch with CUDA)",
        description="Random weights; stages env, model, transfers, pipeline_check, backend (+ numerics), "
        "backend_topk, chunks, device_only, backend_eager, unfused_eager, also, compile, each skipped "
        "when less than its need of --budget-s is left. Rewrites OUT/gpu-bench.json and .md after "
        "every stage (a killed run keeps what it measured); prints the table last.",
    )
    g.add_argument("--arch", default="yolor-p6", help="paper-branch P6 (yolor_p6 is the main-branch one)")
    g.add_argument("--also", default="yolor_p6", help="a second arch at --max-batch ('' for none)")
    g.add_argument("--size", type=int_at_least(32), default=1280, help="input size in pixels")
    g.add_argument(
        "--batches", type=positive_int_list, default=[1, 8, 32], help="batch sizes (default 1,8,32)"
    )
    g.add_argument(
        "--max-batch", type=int_at_least(1), default=32, help="the largest batch, also the backend's"
    )
    g.add_argument("--min-calls", type=int_at_least(1), default=50, help="measured calls per row, at least")
    g.add_argument(
        "--min-seconds", type=non_negative_float, default=2.0, help="measured time per row, at least"
    )
    g.add_argument(
        "--max-seconds", type=positive_float, default=8.0, help="stop a row after this (once 5 calls are in)"
    )
    g.add_argument(
        "--budget-s", type=non_negative_float, default=240.0, help="skip stages that would start later"
    )
    g.add_argument("--compile", action="store_true", help="also the backend with torch.compile (minutes)")
    g.add_argument(
        "--workdir", type=Path, help="the checkpoint (+ model.json) here (default: a temporary one)"
    )
    g.add_argument(
        "--model-dir",
        action="store_true",
        help="write model.json for `yolor serve --backend torch` into --workdir",
    )
    g.add_argument("--out", type=Path, default=Path("gpu-out"), help="gpu-bench.json and .md here")
    g.set_defaults(func=_cmd_gpu)

    from cli.bench_peers_command import register as register_peers

    register_peers(bench)
