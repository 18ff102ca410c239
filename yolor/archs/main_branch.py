"""Networks of the official `main` branch (Darknet cfg files `yolor_p6`, `yolor_w6`, `yolor_csp`,
`yolor_csp_x`).

In these nets every CSP branch ends in its own conv + BatchNorm + SiLU before the concat, and the head
stems sit after the whole neck (cfg layer order: backbone, SPP, top-down, bottom-up, implicit vectors,
head convs). Modules register children in that order; see `yolor.checkpoint`.
"""

from __future__ import annotations

import torch
from torch import nn

from yolor.archs.specs import ArchSpec, Scaling
from yolor.heads import StemmedImplicitHead
from yolor.layers import Bottleneck, ConvBNAct, ReOrg, max_pool_same


class DarkCSP(nn.Module):
    """Backbone CSP stage body: out(cat[blocks(part_b(x)) -> transition?, part_a(x)])."""

    def __init__(self, c: int, n: int, *, transition: bool, eps: float) -> None:
        super().__init__()
        h = c // 2
        self.part_a = ConvBNAct(c, h, 1, eps=eps)
        self.part_b = ConvBNAct(c, h, 1, eps=eps)
        self.blocks = nn.Sequential(*(Bottleneck(h, h, shortcut=True, eps=eps) for _ in range(n)))
        self.transition: nn.Module = ConvBNAct(h, h, 1, eps=eps) if transition else nn.Identity()
        self.out = ConvBNAct(2 * h, c, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.transition(self.blocks(self.part_b(x)))
        return self.out(torch.cat([b, self.part_a(x)], 1))


class DarkCSPNeck(nn.Module):
    """Neck CSP block: x = entry(x); out(cat[plain conv pairs(x), part_a(x)]); no residuals."""

    def __init__(self, c_in: int, c: int, n: int, *, eps: float) -> None:
        super().__init__()
        self.entry = ConvBNAct(c_in, c, 1, eps=eps)
        self.part_a = ConvBNAct(c, c, 1, eps=eps)
        self.blocks = nn.Sequential(*(Bottleneck(c, c, shortcut=False, eps=eps) for _ in range(n)))
        self.out = ConvBNAct(2 * c, c, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        return self.out(torch.cat([self.blocks(x), self.part_a(x)], 1))


class DarkSPPCSP(nn.Module):
    """CSP spatial pyramid pooling; pooled maps concatenated as [13, 9, 5, identity] (cfg order)."""

    def __init__(self, c_in: int, c: int, post_pairs: int, *, eps: float) -> None:
        super().__init__()
        self.part_a = ConvBNAct(c_in, c, 1, eps=eps)
        self.pre = nn.Sequential(
            ConvBNAct(c_in, c, 1, eps=eps), ConvBNAct(c, c, 3, eps=eps), ConvBNAct(c, c, 1, eps=eps)
        )
        self.pools = nn.ModuleList(max_pool_same(k) for k in (13, 9, 5))
        post: list[nn.Module] = [ConvBNAct(4 * c, c, 1, eps=eps), ConvBNAct(c, c, 3, eps=eps)]
        for _ in range(post_pairs - 1):
            post += [ConvBNAct(c, c, 1, eps=eps), ConvBNAct(c, c, 3, eps=eps)]
        self.post = nn.Sequential(*post)
        self.out = ConvBNAct(2 * c, c, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.pre(x)
        b = self.post(torch.cat([*(pool(b) for pool in self.pools), b], 1))
        return self.out(torch.cat([b, self.part_a(x)], 1))


class TopDownStep(nn.Module):
    """One FPN step: reduce the coarser map, upsample, concat with the lateral map, CSP block."""

    def __init__(self, c_coarse: int, c_lateral: int, c: int, csp: nn.Module, *, eps: float) -> None:
        super().__init__()
        self.reduce = ConvBNAct(c_coarse, c, 1, eps=eps)
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.lateral = ConvBNAct(c_lateral, c, 1, eps=eps)
        self.csp = csp

    def forward(self, coarse: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        up = self.upsample(self.reduce(coarse))
        return self.csp(torch.cat([self.lateral(lateral), up], 1))


class BottomUpStep(nn.Module):
    """One PAN step: downsample the finer map, concat with the top-down map, CSP block."""

    def __init__(self, down: nn.Module, csp: nn.Module) -> None:
        super().__init__()
        self.down = down
        self.csp = csp

    def forward(self, finer: torch.Tensor, top_down: torch.Tensor) -> torch.Tensor:
        return self.csp(torch.cat([self.down(finer), top_down], 1))


def backbone_top_down(
    stem: nn.Module, stages: nn.ModuleList, spp: nn.Module, top_down: nn.ModuleList, x: torch.Tensor
) -> list[torch.Tensor]:
    """Run the backbone, SPP on the coarsest level and the top-down path; returns one map per output
    level, finest first (len(top_down) + 1 levels)."""
    x = stem(x)
    feats = []
    for stage in stages:
        x = stage(x)
        feats.append(x)
    feats = feats[-(len(top_down) + 1) :]
    td = [spp(feats[-1])]
    for step, lateral in zip(top_down, reversed(feats[:-1]), strict=True):
        td.append(step(td[-1], lateral))
    return td[::-1]


def _backbone(spec: ArchSpec, sc: Scaling, eps: float) -> tuple[nn.Sequential, nn.ModuleList, list[int]]:
    ch = [sc.channels(spec, c) for c in spec.stem_widths]
    if spec.stem == "reorg":
        stem = nn.Sequential(ReOrg(), ConvBNAct(12, ch[0], 3, eps=eps))
    else:
        stem = nn.Sequential(
            ConvBNAct(3, ch[0], 3, eps=eps),
            ConvBNAct(ch[0], ch[1], 3, 2, eps=eps),
            Bottleneck(ch[1], ch[1] // 2, shortcut=True, eps=eps),
        )
    stages, c_prev, widths = nn.ModuleList(), ch[-1], []
    for c0, n in zip(spec.stage_widths, spec.stage_depths, strict=True):
        c = sc.channels(spec, c0)
        body = DarkCSP(c, sc.repeats(spec, n), transition=spec.csp_transition, eps=eps)
        stages.append(nn.Sequential(ConvBNAct(c_prev, c, 3, 2, eps=eps), body))
        c_prev = c
        widths.append(c)
    return stem, stages, widths


class MainBranchNet(nn.Module):
    """Backbone + SPP-CSP + FPN/PAN neck + implicit head of a main-branch YOLOR; returns raw head maps."""

    def __init__(self, spec: ArchSpec, nc: int, scaling: Scaling) -> None:
        super().__init__()
        eps, sc, nl = spec.bn_eps, scaling, spec.num_levels
        self.stem, self.stages, stage_widths = _backbone(spec, sc, eps)
        level_in = stage_widths[-nl:]
        w = [sc.channels(spec, c) for c in spec.neck_widths]
        n = sc.repeats(spec, spec.neck_depth)
        self.spp = DarkSPPCSP(level_in[-1], w[-1], spec.spp_post_pairs, eps=eps)
        self.top_down = nn.ModuleList(
            TopDownStep(w[i + 1], level_in[i], w[i], DarkCSPNeck(2 * w[i], w[i], n, eps=eps), eps=eps)
            for i in reversed(range(nl - 1))
        )
        self.bottom_up = nn.ModuleList(
            BottomUpStep(ConvBNAct(w[i - 1], w[i], 3, 2, eps=eps), DarkCSPNeck(2 * w[i], w[i], n, eps=eps))
            for i in range(1, nl)
        )
        stems = [sc.channels(spec, 2 * c) for c in spec.neck_widths]
        self.head = StemmedImplicitHead(w, stems, spec.num_anchors, nc, eps=eps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        td = backbone_top_down(self.stem, self.stages, self.spp, self.top_down, x)
        outs = [td[0]]
        for step, top_down in zip(self.bottom_up, td[1:], strict=True):
            outs.append(step(outs[-1], top_down))
        return self.head(outs)
