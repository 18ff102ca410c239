"""Building blocks shared by both official YOLOR code branches.

Registration order of submodules matters in this package: checkpoint conversion pairs our state-dict
entries with the official ones by order (see `yolor.checkpoint`), so every block registers its children
in the order the official code does. Each block's docstring notes where that order is unusual.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of `divisor` that is >= x (the official width-multiplier rounding)."""
    return int(math.ceil(x / divisor) * divisor)


class ConvBNAct(nn.Module):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> SiLU.

    `fuse_model` folds `bn` into `conv` (which then gains a bias) and replaces `bn` by Identity.
    """

    def __init__(
        self, c_in: int, c_out: int, k: int = 1, s: int = 1, *, eps: float, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=eps, momentum=0.03)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 conv -> 3x3 conv, plus the input when `shortcut` (channels: c -> hidden -> c)."""

    def __init__(self, c: int, hidden: int, *, shortcut: bool, eps: float) -> None:
        super().__init__()
        self.reduce = ConvBNAct(c, hidden, 1, eps=eps)
        self.expand = ConvBNAct(hidden, c, 3, eps=eps)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.reduce(x))
        return x + y if self.shortcut else y


class ReOrg(nn.Module):
    """Space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2), in the official slice order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], dim=1)


class HaarDWT(nn.Module):
    """One level of the 2-D Haar wavelet transform, as the official paper branch's `DWT` computes it
    with pytorch_wavelets (`DWTForward(J=1, wave='db1', mode='zero')`, then `cat[yl / 2, yh / 2 + 0.5]`):
    (B, C, H, W) -> (B, 4C, H/2, W/2) for even H, W. For each 2x2 block (a b / c d): first every
    channel's mean (a + b + c + d) / 4, then per channel its three details (a + b - c - d) / 4 + 0.5,
    (a - b + c - d) / 4 + 0.5 and (a - b - c + d) / 4 + 0.5 (pytorch_wavelets' band order and signs,
    checked against it by tests/fixtures/dwt_reference.npz). A fixed linear map: slices and adds,
    so it exports to ONNX with the node types ReOrg already uses. (Without pytorch_wavelets the
    official code silently runs ReOrg instead, which a dwt checkpoint was not trained with.)"""

    scale = 0.25  # the db1 filters' h * h / 2: exactly 1/4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., ::2, ::2], x[..., ::2, 1::2]
        c, d = x[..., 1::2, ::2], x[..., 1::2, 1::2]
        low = (a + b + c + d) * self.scale
        details = torch.stack([a + b - c - d, a - b + c - d, a - b - c + d], dim=2) * self.scale + 0.5
        return torch.cat([low, details.flatten(1, 2)], dim=1)


class ImplicitA(nn.Module):
    """Learned additive implicit knowledge: x + a, with a of shape (1, C, 1, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channels, 1, 1))
        nn.init.normal_(self.implicit, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.implicit


class ImplicitM(nn.Module):
    """Learned multiplicative implicit knowledge: x * m, with m of shape (1, C, 1, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.implicit


class ChannelAffine(nn.Module):
    """Per-channel x * scale + shift: what is left of a BatchNorm that no conv precedes after fusion."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def max_pool_same(k: int) -> nn.MaxPool2d:
    """Stride-1 max pool that keeps the spatial size (SPP)."""
    return nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
