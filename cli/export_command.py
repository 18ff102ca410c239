"""`yolor export CHECKPOINT --out DIR ...` (torch, onnx and onnxruntime imported when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.arguments import fraction, int_at_least
from cli.errors import CommandError

positive = int_at_least(1)
MIN_OPSET = 17  # export.onnx_export.MIN_OPSET, not imported to keep the parser light


def _cmd_export(args: argparse.Namespace) -> int:
    if args.opt_batch is not None and args.opt_batch > args.max_batch:  # else refused after the ONNX work
        raise CommandError(f"--opt-batch {args.opt_batch} is larger than --max-batch {args.max_batch}")
    from export.pipeline import ExportError, ExportOptions, run_export
    from export.validate import PostprocessParams, ValidationFailed

    opts = ExportOptions(
        checkpoint=Path(args.checkpoint),
        out_dir=Path(args.out),
        arch=args.arch,
        img_size=args.img_size,
        head=args.head,
        top_k=args.top_k,
        fp16=args.fp16,
        engine=args.engine,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        workspace_mb=args.workspace_mb,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        opset=args.opset,
        postprocess=PostprocessParams(conf=args.val_conf, iou=args.val_iou),
    )
    try:
        run_export(opts)
    except (ExportError, ValidationFailed) as e:
        raise CommandError(f"export failed, nothing written to {opts.out_dir}: {e}") from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="checkpoint -> fused ONNX (FP32/FP16, dynamic batch) -> TensorRT engine, validated",
        description="Writes model.onnx, model.json (manifest) and, on request, model.fp16.onnx and "
        "model.engine into --out. Every ONNX file is validated against the PyTorch model; an export "
        "out of tolerance fails and writes nothing.",
    )
    p.add_argument("checkpoint", help="official (main or paper branch) or our checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--arch", help="override arch detection")
    p.add_argument("--img-size", type=positive, help="square input size (default: the checkpoint's)")
    p.add_argument(
        "--head",
        choices=["topk", "raw"],
        default="topk",
        help="topk: (B, K, 6) best candidates, thresholds/NMS per request on the host (default); "
        "raw: (B, N, 5+nc) official layout",
    )
    p.add_argument("--top-k", type=positive, default=1000, help="candidates per image for the topk head")
    p.add_argument(
        "--fp16", action="store_true", help="also write model.fp16.onnx (FP16 weights and compute)"
    )
    p.add_argument(
        "--engine", action="store_true", help="also build model.engine (needs TensorRT >= 10 and a GPU)"
    )
    p.add_argument("--max-batch", type=positive, default=16, help="largest batch the server will send")
    p.add_argument("--opt-batch", type=positive, help="TensorRT profile's optimal batch (default max/2)")
    p.add_argument("--workspace-mb", type=positive, default=4096, help="TensorRT workspace limit")
    p.add_argument(
        "--timing-cache", help="TensorRT timing cache file (default: per GPU under ~/.cache/yolor)"
    )
    p.add_argument("--opset", type=int_at_least(MIN_OPSET), default=18, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--val-conf", type=fraction, default=0.25, help="score threshold used by validation")
    p.add_argument("--val-iou", type=fraction, default=0.45, help="NMS IoU used by validation")
    p.set_defaults(func=_cmd_export)
