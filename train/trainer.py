"""`yolor train`: the compact YOLOR training loop.

Official recipe (paper branch train.py): SGD (nesterov) with three parameter groups, linear warm-up
(bias LR from 0.1 down, others up from 0, momentum 0.8 -> 0.937) then cosine decay to lr0 * lrf,
gradient accumulation to a nominal batch of 64, EMA of the weights (evaluated and saved), COCO mAP on
the validation split every epoch, the best checkpoint kept, resumable from `last.pt`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

import yolor
from service.processing import decode_raw_predictions, scale_boxes, select_detections
from train.loss import LossGains, YOLORLoss
from train.optim import (
    ModelEMA,
    cosine_factor,
    init_head_biases,
    make_optimizer,
    set_momentum,
    transfer_weights,
    warmup_values,
)

log = logging.getLogger(__name__)


class TrainConfigError(ValueError):
    """Training settings that cannot be used (a bad option, a resume or fine-tune that does not fit)."""


@dataclass
class TrainConfig:
    data: Path
    out_dir: Path
    arch: str = "yolor-p6"
    depth: float = 1.0
    width: float = 1.0
    img_size: int = 640
    epochs: int = 100
    batch_size: int = 16
    optimizer: str = "sgd"  # "sgd" (official default) or "adam" (official --adam)
    lr0: float | None = None  # None: the official 0.01 for SGD, 0.001 for Adam
    lrf: float = 0.2
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    mosaic: float = 1.0
    workers: int = 2
    seed: int = 0
    weights: Path | None = None  # fine-tune from this checkpoint (official or ours)
    resume: bool = False
    eval_conf: float = 0.001
    eval_iou: float = 0.65
    nominal_batch: int = 64  # gradients accumulate to this many images per step (official: 64)
    max_steps: int | None = None  # stop early (tests, smoke runs)
    gains: LossGains = field(default_factory=LossGains)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise TrainConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr0 is None:
            self.lr0 = 0.01 if self.optimizer == "sgd" else 0.001

    @property
    def lr(self) -> float:
        assert self.lr0 is not None  # set in __post_init__
        return self.lr0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("data", "out_dir", "weights"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if isinstance(values.get("gains"), dict):
            values["gains"] = LossGains(**values["gains"])
        return cls(**values)


# What a resumed run may change: where it runs, how fast it loads, when it stops. Anything else would
# silently change the model or the schedule half-way (another optimiser cannot even load the state).
RESUME_MAY_CHANGE = frozenset({"data", "out_dir", "workers", "resume", "max_steps", "epochs"})


def _load_last(run_dir: Path) -> dict[str, Any]:
    last = run_dir / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"--resume: no {last} to resume from")
    return dict(torch.load(last, map_location="cpu", weights_only=True))


def saved_config(run_dir: Path) -> TrainConfig:
    """The configuration a run was started with (from its ``last.pt``), for ``--resume``."""
    return TrainConfig.from_dict(_load_last(run_dir)["train_config"])


def check_resume(cfg: TrainConfig, run_config: dict[str, Any]) -> None:
    """Refuse to resume with settings other than the run's own ``run_config`` (its saved
    ``train_config``), except RESUME_MAY_CHANGE."""
    saved = TrainConfig.from_dict(run_config).to_dict()
    wanted = cfg.to_dict()
    differ = [k for k in wanted if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != wanted[k]]
    if differ:
        detail = ", ".join(f"{k} {saved[k]!r} -> {wanted[k]!r}" for k in differ)
        raise TrainConfigError(
            f"--resume continues {cfg.out_dir} with its own settings; these differ: {detail}"
        )


def _initial_model(cfg: TrainConfig, names: list[str]) -> yolor.YOLOR:
    model = yolor.build_model(cfg.arch, len(names), depth=cfg.depth, width=cfg.width, class_names=names)
    model.input_size = cfg.img_size
    if cfg.weights is None:
        init_head_biases(model)
        return model
    source = yolor.load_model(cfg.weights)
    if (source.arch, source.scaling) != (model.arch, model.scaling):
        raise TrainConfigError(
            f"--weights is {source.arch} {source.scaling}, but training {model.arch} {model.scaling}"
        )
    skipped = transfer_weights(source, model)
    if skipped:
        log.info(
            "fine-tuning: %d tensors re-initialised (class count %d -> %d)", len(skipped), source.nc, model.nc
        )
        init_head_biases(model)
    return model


@torch.no_grad()
def evaluate(model: yolor.YOLOR, loader: Any, conf: float, iou: float) -> dict[str, Any]:
    """COCO mAP of `model` on the validation loader, boxes compared in original-image pixels."""
    from train.evaluate import coco_map, ground_truth

    model.eval()
    gts, preds = [], []
    for batch in loader:
        out = model(batch.images).numpy()
        for pred, lb, gt_boxes, gt_classes, crowd in zip(
            out, batch.letterboxes, batch.original_boxes, batch.original_classes, batch.original_crowd,
            strict=True,
        ):  # fmt: skip
            boxes, scores, class_ids = decode_raw_predictions(pred, conf)
            dets = select_detections(boxes, scores, class_ids, conf=conf, iou=iou, max_det=300)
            preds.append((scale_boxes(dets.boxes, lb), dets.scores, dets.class_ids))
            gts.append(ground_truth(gt_boxes, gt_classes, crowd))
    return coco_map(gts, preds, model.nc)


def _save(
    path: Path, ema: ModelEMA, model: yolor.YOLOR, optimizer: torch.optim.Optimizer, **state: Any
) -> None:
    """Our checkpoint format (weights_only-loadable); the EMA weights are the model, the raw weights
    and optimiser state make it resumable."""
    tmp = path.with_suffix(".tmp")
    yolor.save_checkpoint(
        ema.ema,  # type: ignore[arg-type]
        tmp,
        train_state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        optimizer=optimizer.state_dict(),
        ema_updates=ema.updates,
        **state,
    )
    tmp.replace(path)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train; returns the best validation metrics. Writes last.pt and best.pt into cfg.out_dir."""
    from train.data.loader import EpochSampler, make_loaders

    resumed = _load_last(cfg.out_dir) if cfg.resume else None
    if resumed is not None:
        check_resume(cfg, resumed["train_config"])
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    train_loader, val_loader, names = make_loaders(
        cfg.data, cfg.img_size, cfg.batch_size, cfg.workers, cfg.seed, mosaic=cfg.mosaic
    )
    model = _initial_model(cfg, names)
    accumulate = max(round(cfg.nominal_batch / cfg.batch_size), 1)
    weight_decay = cfg.weight_decay * cfg.batch_size * accumulate / cfg.nominal_batch
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, weight_decay)
    ema = ModelEMA(model)
    start_epoch, best_fitness = 0, -1.0
    best_metrics: dict[str, Any] = {}
    last = cfg.out_dir / "last.pt"
    if resumed is not None:
        start_epoch, best_fitness, best_metrics = _resume(resumed, model, ema, optimizer)
        sampler = train_loader.sampler
        assert isinstance(sampler, EpochSampler)
        sampler.set_epoch(start_epoch)  # the same shuffles as an uninterrupted run
    loss_fn = YOLORLoss(model.anchors, model.strides, model.nc, cfg.gains)
    nb = len(train_loader)
    # Official: at least 1000 warm-up iterations; that floor would swallow a short CPU run whole.
    warmup_steps = max(round(cfg.warmup_epochs * nb), 1)
    step = start_epoch * nb
    for epoch in range(start_epoch, cfg.epochs):
        mean_loss = _train_epoch(
            cfg, model, ema, optimizer, loss_fn, train_loader, epoch, step, warmup_steps, accumulate
        )
        step += nb
        metrics = evaluate(ema.ema, val_loader, cfg.eval_conf, cfg.eval_iou)  # type: ignore[arg-type]
        fitness = 0.1 * metrics["map50"] + 0.9 * metrics["map50_95"]  # official weighting
        log.info(
            "epoch %d/%d  loss %.4f  mAP@.5 %.4f  mAP@.5:.95 %.4f",
            epoch + 1,
            cfg.epochs,
            mean_loss,
            metrics["map50"],
            metrics["map50_95"],
        )
        improved = fitness > best_fitness
        if improved:
            best_fitness, best_metrics = fitness, metrics
        state = dict(
            epoch=epoch,
            metrics=metrics,
            best_fitness=best_fitness,
            best_metrics=best_metrics,
            train_config=cfg.to_dict(),
        )
        _save(last, ema, model, optimizer, **state)
        if improved:
            _save(cfg.out_dir / "best.pt", ema, model, optimizer, **state)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    return best_metrics


def _train_epoch(
    cfg: TrainConfig,
    model: yolor.YOLOR,
    ema: ModelEMA,
    optimizer: torch.optim.Optimizer,
    loss_fn: YOLORLoss,
    loader: Any,
    epoch: int,
    step: int,
    warmup_steps: int,
    accumulate: int,
) -> float:
    from tqdm import tqdm

    model.train()
    lr_factor = cosine_factor(epoch, cfg.epochs, cfg.lrf)
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2.0)
    optimizer.zero_grad()
    for i, batch in enumerate(bar):
        s = step + i
        acc = accumulate
        if s <= warmup_steps:
            acc = max(1, int(np.interp(s, [0, warmup_steps], [1, accumulate]).round()))
            for g, group in enumerate(optimizer.param_groups):
                group["lr"], momentum = warmup_values(
                    s,
                    warmup_steps,
                    g,
                    cfg.lr * lr_factor,
                    cfg.warmup_bias_lr,
                    cfg.momentum,
                    cfg.warmup_momentum,
                )
                set_momentum(group, momentum)
        else:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor
        loss, items = loss_fn(model(batch.images), batch.targets)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {s}")
        loss.backward()
        if s % acc == 0:
            optimizer.step()
            optimizer.zero_grad()
            ema.update(model)
        total, count = total + float(items[3]), count + 1
        bar.set_postfix(
            loss=f"{total / count:.4f}", box=f"{items[0]:.3f}", obj=f"{items[1]:.3f}", cls=f"{items[2]:.3f}"
        )
        if cfg.max_steps is not None and s + 1 >= cfg.max_steps:
            break
    return total / max(count, 1)


def _resume(
    ckpt: dict[str, Any], model: yolor.YOLOR, ema: ModelEMA, optimizer: torch.optim.Optimizer
) -> tuple[int, float, dict[str, Any]]:
    model.load_state_dict(ckpt["train_state_dict"])
    ema.ema.load_state_dict(ckpt["state_dict"])
    ema.updates = int(ckpt["ema_updates"])
    optimizer.load_state_dict(ckpt["optimizer"])
    log.info("resuming after epoch %d", ckpt["epoch"] + 1)
    best = ckpt.get("best_metrics", ckpt["metrics"])  # older runs saved only the last epoch's
    return int(ckpt["epoch"]) + 1, float(ckpt["best_fitness"]), dict(best)
