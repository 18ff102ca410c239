"""`yolor export CHECKPOINT --out DIR ...` (torch, onnx and onnxruntime imported when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.arguments import fraction, int_at_least
from cli.errors import CommandError

positive = int_at_least(1)
MIN_OPSET = 17  # export.onnx_export.MIN_OPSET, not imported to keep the parser light


def _cmd_export(args: argparse.Namespace) -> int:
    if args.opt_batch is not None and args.opt_batch > args.max_batch:  # else refused after the ONNX work
        raise CommandError(f"--opt-batch {args.opt_batch} is larger than --max-batch {args.max_batch}")
    from export.pipeline import ExportError, ExportOptions, run_export
    from export.validate import PostprocessParams, ValidationFailed

    if (args.calib is not None) != args.int8:
        raise CommandError("--int8 needs --calib IMAGES (and --calib is only for --int8)")
    for name in ("calib", "val_data"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            raise CommandError(f"--{name.replace('_', '-')} {value}: no such file or folder")

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
        int8=_int8_options(args) if args.int8 else None,
    )
    try:
        run_export(opts)
    except (ExportError, ValidationFailed) as e:
        raise CommandError(f"export failed, nothing written to {opts.out_dir}: {e}") from None
    return 0


def _int8_options(args: argparse.Namespace) -> Any:
    from export.int8 import INT8_TARGETS
    from export.pipeline import Int8Options
    from export.validate import Int8Gate

    targets = INT8_TARGETS if args.int8_target == "both" else (args.int8_target,)
    return Int8Options(
        calib=Path(args.calib),
        calib_count=args.calib_count,
        method=args.calib_method,
        targets=targets,
        val_data=Path(args.val_data) if args.val_data else None,
        gate=Int8Gate(
            min_agreement=args.int8_min_agreement,
            max_map_drop=args.int8_max_map_drop,
            min_detections=args.int8_min_detections,
        ),
    )


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
    q = p.add_argument_group("INT8 (post-training quantization, explicit Q/DQ ONNX)")
    q.add_argument("--int8", action="store_true", help="also write an INT8 model, calibrated on --calib")
    q.add_argument("--calib", help="calibration images: a folder, or a dataset (its train split)")
    q.add_argument("--calib-count", type=positive, default=256, help="calibration images used (first N)")
    q.add_argument(
        "--calib-method", choices=["minmax", "percentile", "entropy"], default="percentile",
        help="activation range estimation (ONNX Runtime's calibrators)",
    )  # fmt: skip
    q.add_argument(
        "--int8-target", choices=["onnxruntime", "tensorrt", "both"], default="onnxruntime",
        help="onnxruntime: model.int8.onnx, uint8 activations for CPU kernels; tensorrt: "
        "model.int8-tensorrt.onnx, symmetric int8 as TensorRT's explicit quantization needs",
    )  # fmt: skip
    q.add_argument(
        "--val-data", help="labelled dataset (its val split): INT8 mAP@0.5:0.95 must stay within "
        "--int8-max-map-drop of FP32",
    )  # fmt: skip
    q.add_argument(
        "--int8-max-map-drop", type=float, default=1.0, help="mAP points INT8 may lose (negative: must gain)"
    )
    q.add_argument(
        "--int8-min-agreement", type=fraction, default=0.9,
        help="share of FP32 detections INT8 must keep (IoU >= 0.75)",
    )  # fmt: skip
    q.add_argument(
        "--int8-min-detections", type=int_at_least(0), default=10,
        help="FP32 detections the agreement needs to be judged (0: none, e.g. random weights for speed)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_export)
