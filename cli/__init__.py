"""The `yolor` command line, above the packages (see docs/architecture.md).

Each subcommand module registers its parsers and imports its heavy dependencies (torch, onnx,
uvicorn) only when it runs, so `yolor serve` works in an image without torch.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from cli import (
    bench_command,
    data_command,
    export_command,
    model_commands,
    predict_command,
    serve_command,
    train_command,
    weights_command,
)
from cli.errors import CommandError, is_user_error

__all__ = ["CommandError", "build_parser", "main"]

log = logging.getLogger("yolor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yolor", description="YOLOR detection: model, export, serving")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (
        model_commands,
        weights_command,
        data_command,
        train_command,
        export_command,
        serve_command,
        bench_command,
        predict_command,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # the ONNX toolchain logs every graph rewrite at INFO
        for noisy in ("onnxscript", "onnx_ir", "onnxslim", "torch.onnx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug: its traceback is the report
        log.error("error: %s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
