"""`yolor data synth --out DIR ...`: write the procedural shapes dataset (numpy, OpenCV, scikit-image)."""

from __future__ import annotations

import argparse
import logging
import os
import time

from cli.arguments import int_at_least, seed
from cli.errors import CommandError

non_negative = int_at_least(0)

log = logging.getLogger("yolor")


def _cmd_synth(args: argparse.Namespace) -> int:
    from train.data.synth import CLASS_NAMES, SynthOptions, write_dataset

    try:  # the options are the user's: SynthOptions' bounds checks are user errors here
        options = SynthOptions(
            size=args.size, min_size=args.min_size, max_frac=args.max_frac, max_objects=args.max_objects
        )
    except ValueError as e:
        raise CommandError(str(e)) from None
    started = time.perf_counter()
    try:
        counts = write_dataset(
            args.out,
            train=args.train,
            val=args.val,
            seed=args.seed,
            options=options,
            workers=args.workers,
            overwrite=args.overwrite,
        )
    except FileExistsError as e:
        raise CommandError(str(e)) from None
    seconds = time.perf_counter() - started
    log.info("wrote %d + %d images to %s in %.1f s", args.train, args.val, args.out, seconds)
    for split, per_class in counts.items():
        summary = ", ".join(f"{name} {n}" for name, n in zip(CLASS_NAMES, per_class, strict=True))
        log.info("%s objects: %s", split, summary)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "synth",
        help="write the procedural shapes detection dataset (YOLO layout + dataset.json)",
        description="Draws random shapes (circle, rectangle, triangle, star, cross, ellipse, ring) with "
        "occlusions on cluttered backgrounds. The output depends only on the options and --seed.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=non_negative, default=2000, help="training images (default 2000)")
    p.add_argument("--val", type=non_negative, default=200, help="validation images (default 200)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--size", type=int, default=320, help="longer image side in pixels (default 320)")
    p.add_argument("--min-size", type=float, default=12.0, help="smallest object diameter in pixels")
    p.add_argument("--max-frac", type=float, default=0.6, help="largest object diameter / shorter side")
    p.add_argument("--max-objects", type=int, default=8, help="objects tried per image (default 8)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.set_defaults(func=_cmd_synth)
