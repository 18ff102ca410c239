"""The official YOLOR training objective (paper branch `utils/loss.py`, re-derived).

- Targets are assigned to every anchor whose width/height ratio to the box is within `anchor_t` (4),
  in the box centre's cell and in the two neighbouring cells closest to the centre (offset 0.5).
- Box loss: 1 - CIoU of the decoded box ((2σ - 0.5) offset, (2σ)² x anchor size) against the target.
- Objectness: BCE against the (detached, clamped) IoU at assigned cells and 0 elsewhere, weighted per
  level by [4.0, 1.0, 0.4] (3 levels) or [4.0, 1.0, 0.4, 0.1] (4 levels).
- Classification: BCE on one-hot targets (only when nc > 1).
- Gains: box 0.05, obj 1.0 (x1.4 with 4+ levels), cls 0.5 x nc/80, all x 3/levels; total x batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

BALANCE = {3: (4.0, 1.0, 0.4), 4: (4.0, 1.0, 0.4, 0.1), 5: (4.0, 1.0, 0.5, 0.4, 0.1)}
NEIGHBOUR_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


@dataclass(frozen=True)
class LossGains:
    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5  # for 80 classes; scaled by nc / 80
    anchor_t: float = 4.0


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Complete IoU of matching rows of two (N, 4) cx, cy, w, h tensors -> (N,)."""
    b1x1, b1x2 = box1[:, 0] - box1[:, 2] / 2, box1[:, 0] + box1[:, 2] / 2
    b1y1, b1y2 = box1[:, 1] - box1[:, 3] / 2, box1[:, 1] + box1[:, 3] / 2
    b2x1, b2x2 = box2[:, 0] - box2[:, 2] / 2, box2[:, 0] + box2[:, 2] / 2
    b2y1, b2y2 = box2[:, 1] - box2[:, 3] / 2, box2[:, 1] + box2[:, 3] / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)
    ).clamp(0)
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = v / ((1 + eps) - iou + v).clamp(min=eps)  # identical boxes: 0, not 0/0
    return iou - (rho2 / c2 + v * alpha)


@dataclass
class LevelTargets:
    """Assigned targets of one level: indices into (B, na, ny, nx) and the regression targets."""

    image: torch.Tensor  # (T,) long
    anchor: torch.Tensor  # (T,) long
    gy: torch.Tensor  # (T,) long
    gx: torch.Tensor  # (T,) long
    box: torch.Tensor  # (T, 4) cx, cy offset within the cell, w, h, in grid units
    anchor_wh: torch.Tensor  # (T, 2) grid units
    cls: torch.Tensor  # (T,) long


def build_targets(
    shapes: list[tuple[int, int]], targets: torch.Tensor, anchors_grid: list[torch.Tensor], anchor_t: float
) -> list[LevelTargets]:
    """Official anchor assignment.

    shapes: (ny, nx) per level; targets: (M, 6) [image, class, cx, cy, w, h] normalised to the input;
    anchors_grid: per level (na, 2) anchor sizes in that level's grid units.
    """
    device = targets.device
    na, nt = anchors_grid[0].shape[0], targets.shape[0]
    ai = torch.arange(na, device=device, dtype=targets.dtype).view(na, 1).repeat(1, nt)
    all_t = torch.cat((targets.repeat(na, 1, 1), ai[:, :, None]), 2)  # (na, nt, 7)
    off = NEIGHBOUR_OFFSETS.to(device)
    out = []
    for (ny, nx), anchors in zip(shapes, anchors_grid, strict=True):
        gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=targets.dtype)
        t = all_t * gain
        offsets = torch.zeros(0, 2, device=device)
        if nt:
            r = t[:, :, 4:6] / anchors[:, None]
            t = t[torch.max(r, 1.0 / r).max(2)[0] < anchor_t]  # (k, 7)
            gxy = t[:, 2:4]
            gxi = gain[[2, 3]] - gxy
            j, k = ((gxy % 1.0 < 0.5) & (gxy > 1.0)).T
            left, m = ((gxi % 1.0 < 0.5) & (gxi > 1.0)).T
            mask = torch.stack((torch.ones_like(j), j, k, left, m))
            t = t.repeat((5, 1, 1))[mask]
            offsets = (torch.zeros_like(gxy)[None] + off[:, None])[mask]
        else:
            t = all_t[0]
        gxy = t[:, 2:4]
        gij = (gxy - offsets).long() if nt else gxy.long()
        gx, gy = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
        a = t[:, 6].long()
        out.append(
            LevelTargets(
                image=t[:, 0].long(),
                anchor=a,
                gy=gy,
                gx=gx,
                box=torch.cat((gxy - gij, t[:, 4:6]), 1),
                anchor_wh=anchors[a],
                cls=t[:, 1].long(),
            )
        )
    return out


class YOLORLoss(nn.Module):
    """loss(raw_outputs, targets) -> (total x batch size, detached [box, obj, cls, total])."""

    anchors_grid: torch.Tensor

    def __init__(
        self, anchors: torch.Tensor, strides: tuple[int, ...], nc: int, gains: LossGains | None = None
    ):
        super().__init__()
        self.gains = gains or LossGains()
        self.nc, self.nl = nc, len(strides)
        if self.nl not in BALANCE:
            raise ValueError(f"no objectness balance for {self.nl} levels")
        stride = torch.tensor(strides, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("anchors_grid", anchors.detach().float() / stride)  # (nl, na, 2)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, raw: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = raw[0].device
        shapes = [(p.shape[2], p.shape[3]) for p in raw]
        assigned = build_targets(shapes, targets.to(device), list(self.anchors_grid), self.gains.anchor_t)
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        for p, lt, balance in zip(raw, assigned, BALANCE[self.nl], strict=True):
            tobj = torch.zeros_like(p[..., 0])
            if lt.image.numel():
                ps = p[lt.image, lt.anchor, lt.gy, lt.gx]
                pxy = ps[:, :2].sigmoid() * 2.0 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * lt.anchor_wh
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), lt.box)
                lbox = lbox + (1.0 - iou).mean()
                # gr = 1: the objectness target is the IoU itself
                tobj[lt.image, lt.anchor, lt.gy, lt.gx] = iou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:
                    t = torch.zeros_like(ps[:, 5:])
                    t[torch.arange(len(lt.cls), device=device), lt.cls] = 1.0
                    lcls = lcls + self.bce(ps[:, 5:], t)
            lobj = lobj + self.bce(p[..., 4], tobj) * balance
        s = 3 / self.nl
        lbox = lbox * self.gains.box * s
        lobj = lobj * self.gains.obj * s * (1.4 if self.nl >= 4 else 1.0)
        lcls = lcls * self.gains.cls * self.nc / 80 * s
        loss = lbox + lobj + lcls
        bs = raw[0].shape[0]
        return loss * bs, torch.stack((lbox, lobj, lcls, loss)).detach()
