"""Optimiser pieces of the official YOLOR recipe: parameter groups, warm-up + cosine LR, EMA, head init."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from yolor.heads import _ImplicitHeadBase
from yolor.layers import ImplicitA, ImplicitM
from yolor.model import YOLOR


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Three groups as in the official train.py: BatchNorm weights and implicit vectors (no decay),
    conv weights (decay), biases (no decay; warm-up starts their LR high)."""
    no_decay, decay, biases = [], [], []
    for module in model.modules():
        if isinstance(getattr(module, "bias", None), nn.Parameter):
            biases.append(module.bias)
        if isinstance(module, nn.BatchNorm2d):
            no_decay.append(module.weight)
        elif isinstance(getattr(module, "weight", None), nn.Parameter):
            decay.append(module.weight)
        if isinstance(module, (ImplicitA, ImplicitM)):
            no_decay.append(module.implicit)
    seen = {id(p) for g in (no_decay, decay, biases) for p in g}
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise ValueError(f"parameters in no optimiser group: {missing[:5]}")
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]


def cosine_factor(epoch: float, epochs: int, lrf: float) -> float:
    """LR multiplier: 1 at epoch 0 falling to lrf at the end (official one-cycle cosine)."""
    return ((1 + math.cos(epoch * math.pi / epochs)) / 2) * (1 - lrf) + lrf


def make_optimizer(
    model: nn.Module, kind: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The official choice: SGD with Nesterov momentum, or (``--adam``) Adam with beta1 = momentum.
    Weight decay applies to the conv-weight group only (L2, as the official code does)."""
    groups = param_groups(model, weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {kind!r}")


def set_momentum(group: dict, momentum: float) -> None:
    """Momentum of one param group: SGD's ``momentum`` or Adam's beta1."""
    if "betas" in group:
        group["betas"] = (momentum, group["betas"][1])
    else:
        group["momentum"] = momentum


def warmup_values(
    step: int,
    warmup_steps: int,
    group: int,
    target_lr: float,
    warmup_bias_lr: float,
    momentum: float,
    warmup_momentum: float,
) -> tuple[float, float]:
    """(lr, momentum) during warm-up: bias LR falls from warmup_bias_lr, others rise from 0."""
    start = warmup_bias_lr if group == 2 else 0.0
    lr = float(np.interp(step, [0, warmup_steps], [start, target_lr]))
    mom = float(np.interp(step, [0, warmup_steps], [warmup_momentum, momentum]))
    return lr, mom


class ModelEMA:
    """Exponential moving average of parameters and buffers, decay ramping up over ~2000 updates."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, updates: int = 0) -> None:
        self.ema = copy.deepcopy(model).eval()
        self.updates = updates
        self.decay = decay
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / 2000))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point and name != "anchors":  # anchors are constants: copy
                value.mul_(d).add_(source[name].detach(), alpha=1 - d)
            else:
                value.copy_(source[name])


@torch.no_grad()
def init_head_biases(model: YOLOR) -> None:
    """Official prior for a fresh head: ~8 objects per 640 image, class probability 0.6/(nc - 0.99)
    (for one class ~0.98: the class output has no loss then, so it must start near 1)."""
    head = model.net.head
    assert isinstance(head, _ImplicitHeadBase)
    for conv, stride in zip(head.preds, model.strides, strict=True):
        assert conv.bias is not None
        b = conv.bias.view(head.na, -1)
        b[:, 4] += math.log(8 / (640 / stride) ** 2)
        b[:, 5:] += math.log(0.6 / (model.nc - 0.99))


def transfer_weights(source: YOLOR, target: YOLOR) -> list[str]:
    """Copy every tensor whose name and shape match (fine-tuning); returns the names left as
    initialised (the prediction convs and ImplicitM when the class count differs)."""
    src = source.state_dict()
    dst = target.state_dict()
    skipped = []
    for name, value in dst.items():
        if name in src and src[name].shape == value.shape:
            value.copy_(src[name])
        else:
            skipped.append(name)
    return skipped
