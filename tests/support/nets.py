"""Small random YOLOR nets and checkpoints for tests: weights far from a fresh init, so that fusing,
exporting and comparing detections are meaningful."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import yolor
from yolor.layers import ImplicitA, ImplicitM

# One net per official branch, shrunk so CI stays fast; yolor-e6 also covers DownC, the two
# YOLOR-S4 nets their space-to-depth stems (ReOrg, Haar wavelet) and the paper BottleneckCSP.
TINY = {
    "yolor_csp": dict(nc=4, depth=0.33, width=0.125),
    "yolor-e6": dict(nc=3, depth=0.33, width=0.1),
    "yolor-ssss-dwt": dict(nc=3, width=0.125),
    "yolor-ssss-s2d": dict(nc=2, width=0.125),
}
IMG_SIZE = {"yolor_csp": 128, "yolor-e6": 192, "yolor-ssss-dwt": 128, "yolor-ssss-s2d": 96}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics far from identity and non-trivial implicit vectors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
            elif isinstance(m, ImplicitA):
                m.implicit.copy_(torch.randn(m.implicit.shape, generator=gen) * 0.5)
            elif isinstance(m, ImplicitM):
                m.implicit.copy_(1 + torch.randn(m.implicit.shape, generator=gen) * 0.3)
    return model


def tiny_checkpoint(arch: str, path: Path) -> Path:
    """Random weights, with prediction logits spread wide like a trained model's: a model
    whose scores all sit near one value makes NMS pick arbitrary survivors among near-ties, and
    no detection comparison (FP16 included) is meaningful on it."""
    torch.manual_seed(0)
    model = randomize(yolor.build_model(arch, **TINY[arch]))
    with torch.no_grad():
        for conv in model.net.head.preds:
            conv.weight.mul_(3.0)
    yolor.save_checkpoint(model, path, input_size=IMG_SIZE[arch])
    return path
