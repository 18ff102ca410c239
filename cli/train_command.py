"""`yolor train --data ... --arch ...` (torch imported when it runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.arguments import fraction, int_at_least, non_negative_float, positive_float, seed
from cli.errors import CommandError

if TYPE_CHECKING:
    from train.trainer import TrainConfig

log = logging.getLogger("yolor")

positive = int_at_least(1)


# command-line option -> TrainConfig field, for the options that map one to one
_FIELDS = {
    "data": "data", "arch": "arch", "depth": "depth", "width": "width", "img_size": "img_size",
    "epochs": "epochs", "batch": "batch_size", "optimizer": "optimizer", "lr0": "lr0",
    "warmup_bias_lr": "warmup_bias_lr", "mosaic": "mosaic", "warmup_epochs": "warmup_epochs",
    "nominal_batch": "nominal_batch", "workers": "workers", "seed": "seed", "weights": "weights",
    "max_steps": "max_steps",
}  # fmt: skip


def _config(args: argparse.Namespace) -> TrainConfig:
    """Options left out take TrainConfig's defaults, or with --resume the run's saved settings (then
    only --epochs, --workers, --max-steps and --data may change; others must match or it refuses)."""
    from train.trainer import TrainConfig, saved_config

    given: dict[str, Any] = {
        field: getattr(args, option) for option, field in _FIELDS.items() if getattr(args, option) is not None
    }
    for key in ("data", "weights"):
        if key in given:
            given[key] = Path(given[key])
    out = Path(args.out)
    if args.resume:
        cfg = replace(saved_config(out), **given, out_dir=out, resume=True)
    elif "data" not in given:
        raise CommandError("--data is required (except with --resume)")
    else:
        cfg = TrainConfig(out_dir=out, **given)
    _check_arch_and_size(cfg)
    return cfg


def _check_arch_and_size(cfg: TrainConfig) -> None:
    """Before the data loads: an unknown arch (UnknownArch), an input size the net cannot take (else a
    ValueError from the first forward pass)."""
    from yolor.archs.specs import get_spec

    stride = max(get_spec(cfg.arch).strides)
    if cfg.img_size % stride:
        raise CommandError(f"--img-size {cfg.img_size} must be a multiple of {stride} for {cfg.arch}")


def _cmd_train(args: argparse.Namespace) -> int:
    from train.trainer import train

    cfg = _config(args)
    best = train(cfg)
    sys.stdout.write(json.dumps({"best": best, "checkpoint": str(cfg.out_dir / "best.pt")}, indent=2) + "\n")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from train.eval_model import evaluate_model

    metrics = evaluate_model(
        Path(args.model),
        Path(args.data),
        args.split,
        conf=args.conf,
        iou=args.iou,
        multi_label=args.multi_label,
        precision=args.precision,
    )
    sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a YOLOR on a YOLO-format or COCO dataset",
        description="Official YOLOR objective and recipe; writes last.pt / best.pt (our checkpoint "
        "format, accepted by yolor export and yolor.load_model) into --out. COCO mAP on the val split "
        "every epoch; --resume continues from --out/last.pt.",
    )
    p.add_argument("--data", help="dataset.json (yolor data synth), a YOLO folder or COCO json")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--arch", help="registered arch (yolor archs; default yolor-p6)")
    p.add_argument("--depth", type=positive_float, help="depth multiplier (default 1.0)")
    p.add_argument("--width", type=positive_float, help="width multiplier (default 1.0)")
    p.add_argument("--img-size", type=positive, help="square training input (default 640)")
    p.add_argument("--epochs", type=positive, help="default 100")
    p.add_argument("--batch", type=positive, help="images per forward pass (default 16)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="sgd (official default) or adam")
    p.add_argument("--lr0", type=positive_float, help="initial LR (default: sgd 0.01, adam 0.001)")
    p.add_argument(
        "--warmup-bias-lr", type=non_negative_float, help="bias LR at the start of warm-up (default 0.1)"
    )
    p.add_argument("--mosaic", type=fraction, help="mosaic probability (default 1.0)")
    p.add_argument("--warmup-epochs", type=non_negative_float, help="default 3")
    p.add_argument(
        "--nominal-batch", type=positive, help="accumulate gradients to this batch size (default 64)"
    )
    p.add_argument("--workers", type=int_at_least(0), help="data loader processes (default 2)")
    p.add_argument("--seed", type=seed, help="default 0")
    p.add_argument("--weights", help="fine-tune from this checkpoint (official or ours)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue --out/last.pt with the run's saved settings (--epochs, --workers may change)",
    )
    p.add_argument("--max-steps", type=positive, help="stop after this many batches (smoke runs)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="COCO mAP of a checkpoint or an exported model folder on a dataset split",
        description="A .pt checkpoint runs in PyTorch; an exported folder (model.json) runs its ONNX "
        "with ONNX Runtime, as the service does. Serving letterbox and NMS; boxes compared in "
        "original-image pixels.",
    )
    p.add_argument("model", help="checkpoint file or exported model folder")
    p.add_argument("--data", required=True, help="dataset.json, YOLO folder or COCO json")
    p.add_argument("--split", default="val")
    p.add_argument("--conf", type=fraction, default=0.001, help="score threshold (official test: 0.001)")
    p.add_argument("--iou", type=fraction, default=0.65, help="NMS IoU (official test: 0.65)")
    p.add_argument(
        "--multi-label",
        action="store_true",
        help="every class above --conf per box, as official test.py (default: the best class, as served; "
        "needs a checkpoint or a --head raw export)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="an exported folder's ONNX to run (fp16 falls back to fp32 when not exported)",
    )
    p.set_defaults(func=_cmd_eval)
