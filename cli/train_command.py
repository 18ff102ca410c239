"""`yolor train --data ... --arch ...` (torch imported when it runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("yolor")


def _cmd_train(args: argparse.Namespace) -> int:
    from train.trainer import TrainConfig, train

    cfg = TrainConfig(
        data=Path(args.data),
        out_dir=Path(args.out),
        arch=args.arch,
        depth=args.depth,
        width=args.width,
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch,
        optimizer=args.optimizer,
        lr0=args.lr0,
        mosaic=args.mosaic,
        warmup_epochs=args.warmup_epochs,
        nominal_batch=args.nominal_batch,
        workers=args.workers,
        seed=args.seed,
        weights=Path(args.weights) if args.weights else None,
        resume=args.resume,
        max_steps=args.max_steps,
    )
    best = train(cfg)
    sys.stdout.write(json.dumps({"best": best, "checkpoint": str(cfg.out_dir / "best.pt")}, indent=2) + "\n")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from train.eval_model import evaluate_model

    metrics = evaluate_model(Path(args.model), Path(args.data), args.split, conf=args.conf, iou=args.iou)
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
    p.add_argument(
        "--data", required=True, help="dataset.json (yolor data synth), a YOLO folder or COCO json"
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--arch", default="yolor-p6", help="registered arch (yolor archs)")
    p.add_argument("--depth", type=float, default=1.0, help="depth multiplier")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--optimizer", choices=["sgd", "adam"], default="sgd", help="official default sgd; adam = --adam"
    )
    p.add_argument("--lr0", type=float, default=0.01, help="initial LR (sgd 0.01, adam ~0.001)")
    p.add_argument("--mosaic", type=float, default=1.0, help="mosaic probability")
    p.add_argument("--warmup-epochs", type=float, default=3.0)
    p.add_argument("--nominal-batch", type=int, default=64, help="accumulate gradients to this batch size")
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", help="fine-tune from this checkpoint (official or ours)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke runs)")
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
    p.add_argument("--conf", type=float, default=0.001, help="score threshold (official test: 0.001)")
    p.add_argument("--iou", type=float, default=0.65, help="NMS IoU (official test: 0.65)")
    p.set_defaults(func=_cmd_eval)
