"""`yolor predict SOURCE... (--model DIR | --url URL) --out OUT`: detections for files in bulk.

With --model the model runs in this process as `yolor serve` would run it (the same `YOLOR_*`
settings, loader, batcher and detector: needs the `serve` extra); with --url a running server does
the work over HTTP. Exit status 0: every source done; 1: some failed (each reported, the rest done);
2: bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Any

from cli.arguments import fraction, int_at_least
from cli.errors import CommandError, settings_problems
from cli.serve_command import BACKENDS

log = logging.getLogger("yolor")

FORMATS = ("jsonl", "coco", "yolo", "labelstudio")


def _formats(text: str) -> list[str]:
    """An argparse `type`: "coco,yolo" -> ["coco", "yolo"]."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(FORMATS)}, got {text!r}")
    return names


def _require(modules: list[str], extra: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CommandError(f"needs {', '.join(missing)}: pip install 'yolor-serving[{extra}]'")


def _settings(args: argparse.Namespace) -> Any:
    """The server's Settings for --model: YOLOR_* variables, then the options given here."""
    from pydantic import ValidationError

    from service.settings import Settings

    given = {"backend": args.backend, "device": args.device, "precision": args.precision}
    try:
        return Settings(model_dir=args.model, **{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        raise CommandError(f"invalid settings: {settings_problems(e)}") from None


async def _predict(args: argparse.Namespace, sources: list[Any], problems: list[Any]) -> Any:
    from predict.engine import Engine, Filters, StartError
    from predict.run import RunOptions, run

    classes = tuple(args.classes.split(",")) if args.classes else None
    filters = Filters(conf=args.conf, iou=args.iou, max_det=args.max_det, classes=classes)
    engine: Engine
    try:
        if args.url is not None:
            from predict.remote import RemoteEngine

            engine = await RemoteEngine.start(
                args.url.rstrip("/"), filters, api_key=args.api_key, connections=args.concurrency or 32
            )
            concurrency = args.concurrency or min(32, 2 * engine.max_batch)
        else:
            from predict.local import LocalEngine

            settings = _settings(args)
            engine = await LocalEngine.start(settings, filters)
            concurrency = min(args.concurrency or 2 * engine.max_batch, settings.queue_size)
    except StartError as e:
        raise CommandError(str(e)) from None
    log.info("%d sources; %s, %d at a time", len(sources), engine.model_version, concurrency)
    options = RunOptions(
        out=args.out,
        formats=tuple(args.format),
        concurrency=concurrency,
        vid_stride=args.vid_stride,
        track=args.track,
        save_annotated=args.save_annotated,
        resume=args.resume,
        quiet=args.quiet,
    )
    try:
        return await run(sources, engine, options, problems)
    finally:
        await engine.close()


def _cmd_predict(args: argparse.Namespace) -> int:
    _require(["tqdm"] + (["httpx"] if args.url else []), "predict")
    if args.model is not None:
        _require(["pydantic_settings"], "serve")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from predict.sources import expand

    sources, problems = expand(args.sources)
    if not sources:
        named = "; ".join(f"{p.spec}: {p.message}" for p in problems)
        raise CommandError(f"no images or videos to predict ({named})")
    with logging_redirect_tqdm():
        summary = asyncio.run(_predict(args, sources, problems))
    rate = f", {summary.frames / summary.seconds:.1f} frames/s" if summary.frames and summary.seconds else ""
    log.info("%d done, %d failed, %d already done; %d video frames%s; results in %s", summary.done,
             summary.failed, summary.resumed, summary.frames, rate, args.out)  # fmt: skip
    if summary.failed:
        log.error("error: %d sources failed (listed in %s)", summary.failed, args.out / "errors.jsonl")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="detections for images, folders and videos, written to a folder",
        description="Runs every source (image or video file, folder searched recursively, glob, "
        "@list.txt with one per line) in this process (--model, as `yolor serve` runs it) or on a "
        "running server (--url), and writes OUT/predictions.jsonl as results arrive (one line per "
        "image and per video frame, a summary line per video), OUT/errors.jsonl for the sources that "
        "failed, and the --format files. Exit status 1 when some sources failed.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image, video, folder, glob or @list.txt")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path, help="model directory, run in this process")
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--format",
        type=_formats,
        default=["jsonl"],
        help="also write coco (coco.json), yolo (labels/), labelstudio (labelstudio.json); comma-separated",
    )
    p.add_argument("--conf", type=fraction, help="keep detections with score > conf (default 0.25)")
    p.add_argument("--iou", type=fraction, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--classes", help="class ids or names to keep, comma-separated (default: all)")
    p.add_argument("--max-det", type=int_at_least(1, 10_000), help="most detections per image (default 300)")
    p.add_argument("--vid-stride", type=int_at_least(1, 10_000), default=1, help="run every Nth video frame")
    p.add_argument("--track", action="store_true", help="videos: ByteTrack ids per detection (as track=true)")
    p.add_argument("--save-annotated", action="store_true", help="images with boxes drawn in OUT/annotated/")
    p.add_argument(
        "--resume", action="store_true", help="skip the sources OUT/predictions.jsonl has complete"
    )
    p.add_argument(
        "--concurrency", type=int_at_least(1, 1024), help="images in flight (default: 2 x the max batch)"
    )
    p.add_argument("--api-key", help="with --url: sent as a Bearer token")
    p.add_argument("--backend", choices=BACKENDS, help="with --model: runtime (default: as yolor serve)")
    p.add_argument("--device", help="with --model: auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"), help="with --model")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)
