"""`yolor archs`, `yolor info` and `yolor convert`: model inspection and conversion (needs torch,
imported lazily)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.errors import CommandError


def _cmd_archs(args: argparse.Namespace) -> int:
    from yolor.archs.specs import ARCHS

    for name, spec in ARCHS.items():
        sys.stdout.write(
            f"{name:12s} branch={spec.branch:5s} strides={list(spec.strides)} input={spec.input_size}\n"
        )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from yolor.checkpoint import load_model

    model = load_model(args.checkpoint, arch=args.arch)
    info = {
        "arch": model.arch,
        "branch": model.spec.branch,
        "nc": model.nc,
        "depth": model.scaling.depth,
        "width": model.scaling.width,
        "input_size": model.input_size,
        "strides": list(model.strides),
        "anchors": model.anchors.tolist(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "class_names": model.class_names,
    }
    sys.stdout.write(json.dumps(info, indent=2) + "\n")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from yolor.checkpoint import load_model, save_checkpoint

    out = Path(args.out)  # checked first: torch.save reports a bad path as a bare RuntimeError
    if out.is_dir():
        raise CommandError(f"{out} is a directory; give the output file's name")
    if not out.parent.is_dir():
        raise CommandError(f"cannot write {out}: {out.parent} is not a directory")
    model = load_model(args.checkpoint, arch=args.arch)
    save_checkpoint(model, args.out, half=args.half)
    sys.stdout.write(f"wrote {args.out} ({model.arch}, {model.nc} classes{', fp16' if args.half else ''})\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("archs", help="list the registered YOLOR architectures")
    p.set_defaults(func=_cmd_archs)
    p = sub.add_parser("info", help="load a checkpoint (official or ours) and describe it")
    p.add_argument("checkpoint")
    p.add_argument("--arch", default=None, help="override arch detection")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser(
        "convert",
        help="any checkpoint yolor loads (official, or a training run's) -> our format, weights only",
        description="Writes the model weights only (a training run's EMA weights, no optimiser state) in "
        "our format, loadable with torch.load(weights_only=True).",
    )
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--arch", default=None, help="override arch detection")
    p.add_argument("--half", action="store_true", help="store FP16 weights (half the size)")
    p.set_defaults(func=_cmd_convert)
