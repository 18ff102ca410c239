"""Networks of the official `paper` branch (`yolor-p6`, `-w6`, `-e6`, `-d6`, `-ssss-dwt`, `-ssss-s2d`).

Unlike the main branch, each CSP block ends with ONE BatchNorm + SiLU over the concat of its two
branches, one of which is a plain conv (no BN of its own). The blocks register children in the
official attribute order (e.g. the output conv before the repeated blocks); see `yolor.checkpoint`.
`scale_blocks` is Identity until `fuse_model` folds the blocks' half of that BatchNorm into it (or,
where a plain conv `close` ends the blocks branch, into that conv).
"""

from __future__ import annotations

import torch
from torch import nn

from yolor.archs.main_branch import BottomUpStep, TopDownStep, backbone_top_down
from yolor.archs.specs import ArchSpec, Scaling
from yolor.heads import ImplicitHead
from yolor.layers import Bottleneck, ConvBNAct, HaarDWT, ReOrg, max_pool_same


class _ConcatBN(nn.Module):
    """Shared tail: act(bn(cat[scale_blocks(blocks_out), plain_conv_out])) -> out conv."""

    bn: nn.Module
    act: nn.Module
    out: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.scale_blocks: nn.Module = nn.Identity()

    def merge(self, from_blocks: torch.Tensor, from_plain: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.scale_blocks(from_blocks), from_plain], 1)
        return self.out(self.act(self.bn(y)))


class CSPF(_ConcatBN):
    """Official `BottleneckCSPF` (backbone): blocks on part_b(x), plain 1x1 part_a(x)."""

    def __init__(self, c: int, n: int, *, eps: float) -> None:
        super().__init__()
        h = c // 2
        self.part_b = ConvBNAct(c, h, 1, eps=eps)
        self.part_a = nn.Conv2d(c, h, 1, bias=False)
        self.out = ConvBNAct(2 * h, c, 1, eps=eps)
        self.bn = nn.BatchNorm2d(2 * h, eps=eps, momentum=0.03)
        self.act = nn.SiLU()
        self.blocks = nn.Sequential(*(Bottleneck(h, h, shortcut=True, eps=eps) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.blocks(self.part_b(x)), self.part_a(x))


class CSP(_ConcatBN):
    """Official `BottleneckCSP` (SSSS backbone): blocks on part_b(x) closed by a plain 1x1 conv, plain
    1x1 part_a(x); unlike CSPF it may change the width (c_in -> c)."""

    close: nn.Conv2d

    def __init__(self, c_in: int, c: int, n: int, *, eps: float) -> None:
        super().__init__()
        h = c // 2
        self.part_b = ConvBNAct(c_in, h, 1, eps=eps)
        self.part_a = nn.Conv2d(c_in, h, 1, bias=False)
        self.close = nn.Conv2d(h, h, 1, bias=False)
        self.out = ConvBNAct(2 * h, c, 1, eps=eps)
        self.bn = nn.BatchNorm2d(2 * h, eps=eps, momentum=0.03)
        self.act = nn.SiLU()
        self.blocks = nn.Sequential(*(Bottleneck(h, h, shortcut=True, eps=eps) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.close(self.blocks(self.part_b(x))), self.part_a(x))


class CSP2(_ConcatBN):
    """Official `BottleneckCSP2` (neck): x = entry(x); blocks(x) and plain 1x1 part_a(x)."""

    def __init__(self, c_in: int, c: int, n: int, *, eps: float) -> None:
        super().__init__()
        self.entry = ConvBNAct(c_in, c, 1, eps=eps)
        self.part_a = nn.Conv2d(c, c, 1, bias=False)
        self.out = ConvBNAct(2 * c, c, 1, eps=eps)
        self.bn = nn.BatchNorm2d(2 * c, eps=eps, momentum=0.03)
        self.act = nn.SiLU()
        self.blocks = nn.Sequential(*(Bottleneck(c, c, shortcut=False, eps=eps) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        return self.merge(self.blocks(x), self.part_a(x))


class SPPCSP(_ConcatBN):
    """Official `SPPCSP`; pooled maps concatenated as [identity, 5, 9, 13]."""

    def __init__(self, c_in: int, c: int, *, eps: float) -> None:
        super().__init__()
        self.pre1 = ConvBNAct(c_in, c, 1, eps=eps)
        self.part_a = nn.Conv2d(c_in, c, 1, bias=False)
        self.pre2 = ConvBNAct(c, c, 3, eps=eps)
        self.pre3 = ConvBNAct(c, c, 1, eps=eps)
        self.pools = nn.ModuleList(max_pool_same(k) for k in (5, 9, 13))
        self.post1 = ConvBNAct(4 * c, c, 1, eps=eps)
        self.post2 = ConvBNAct(c, c, 3, eps=eps)
        self.bn = nn.BatchNorm2d(2 * c, eps=eps, momentum=0.03)
        self.act = nn.SiLU()
        self.out = ConvBNAct(2 * c, c, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.pre3(self.pre2(self.pre1(x)))
        b = self.post2(self.post1(torch.cat([b, *(pool(b) for pool in self.pools)], 1)))
        return self.merge(b, self.part_a(x))


class DownC(nn.Module):
    """Official `DownC`: cat[3x3/2 conv(1x1 conv(x)), 1x1 conv(maxpool2(x))], each half the width."""

    def __init__(self, c_in: int, c_out: int, *, eps: float) -> None:
        super().__init__()
        self.reduce = ConvBNAct(c_in, c_in, 1, eps=eps)
        self.down = ConvBNAct(c_in, c_out // 2, 3, 2, eps=eps)
        self.pool_proj = ConvBNAct(c_in, c_out // 2, 1, eps=eps)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.down(self.reduce(x)), self.pool_proj(self.pool(x))], 1)


def _down(spec: ArchSpec, c_in: int, c_out: int, eps: float) -> nn.Module:
    return DownC(c_in, c_out, eps=eps) if spec.down == "downc" else ConvBNAct(c_in, c_out, 3, 2, eps=eps)


def _stem(spec: ArchSpec, sc: Scaling) -> tuple[nn.Sequential, int]:
    """The stem and its output width."""
    if spec.stem == "reorg":
        c = sc.channels(spec, spec.stem_widths[0])
        return nn.Sequential(ReOrg(), ConvBNAct(12, c, 3, eps=spec.bn_eps)), c
    step = {"s2d": ReOrg, "dwt": HaarDWT}[spec.stem]
    return nn.Sequential(step(), step(), step()), 3 * 4**3


def _stage(spec: ArchSpec, c_in: int, c: int, n: int, down: bool) -> nn.Sequential:
    eps = spec.bn_eps
    if spec.csp == "csp":
        csp: nn.Module = CSP(c if down else c_in, c, n, eps=eps)
    else:
        csp = CSPF(c, n, eps=eps)
    return nn.Sequential(_down(spec, c_in, c, eps), csp) if down else nn.Sequential(csp)


class PanStep(nn.Module):
    """Head stem of the level being left (official order: stem first), then one bottom-up step."""

    def __init__(self, stem: nn.Module, step: BottomUpStep) -> None:
        super().__init__()
        self.stem = stem
        self.step = step

    def forward(self, level: torch.Tensor, top_down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(head stem output of `level`, the next coarser level)."""
        return self.stem(level), self.step(level, top_down)


class PaperBranchNet(nn.Module):
    """Backbone + SPP-CSP + FPN/PAN neck + IDetect head of a paper-branch YOLOR; returns raw head maps."""

    def __init__(self, spec: ArchSpec, nc: int, scaling: Scaling) -> None:
        super().__init__()
        eps, sc, nl = spec.bn_eps, scaling, spec.num_levels
        self.stem, c_prev = _stem(spec, sc)
        self.stages, widths = nn.ModuleList(), []
        for c0, n, down in zip(spec.stage_widths, spec.stage_depths, spec.stage_downsamples, strict=True):
            c = sc.channels(spec, c0)
            self.stages.append(_stage(spec, c_prev, c, sc.repeats(spec, n), down))
            c_prev = c
            widths.append(c)
        level_in = widths[-nl:]
        w = [sc.channels(spec, c) for c in spec.neck_widths]
        stems = [sc.channels(spec, 2 * c) for c in spec.neck_widths]
        n = sc.repeats(spec, spec.neck_depth)
        self.spp = SPPCSP(level_in[-1], w[-1], eps=eps)
        self.top_down = nn.ModuleList(
            TopDownStep(w[i + 1], level_in[i], w[i], CSP2(2 * w[i], w[i], n, eps=eps), eps=eps)
            for i in reversed(range(nl - 1))
        )
        self.pan = nn.ModuleList(
            PanStep(
                ConvBNAct(w[i - 1], stems[i - 1], 3, eps=eps),
                BottomUpStep(_down(spec, w[i - 1], w[i], eps), CSP2(2 * w[i], w[i], n, eps=eps)),
            )
            for i in range(1, nl)
        )
        self.last_stem = ConvBNAct(w[-1], stems[-1], 3, eps=eps)
        self.head = ImplicitHead(stems, spec.num_anchors, nc)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        td = backbone_top_down(self.stem, self.stages, self.spp, self.top_down, x)
        level, stems = td[0], []
        for pan, top_down in zip(self.pan, td[1:], strict=True):
            stem, level = pan(level, top_down)
            stems.append(stem)
        stems.append(self.last_stem(level))
        return self.head(stems)
