"""YOLOR detection heads and the box decoding they share.

Per level the head computes  im * (pred(ia + x))  where `ia` (ImplicitA) and `im` (ImplicitM) are the
learned implicit vectors; `fuse_model` folds both into `pred` and replaces them by Identity.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from yolor.layers import ConvBNAct, ImplicitA, ImplicitM


class _ImplicitHeadBase(nn.Module):
    ia: nn.ModuleList
    im: nn.ModuleList

    def __init__(self, num_anchors: int, nc: int) -> None:
        super().__init__()
        self.na, self.nc, self.no = num_anchors, nc, nc + 5

    @property
    def preds(self) -> list[nn.Conv2d]:
        raise NotImplementedError

    def _predict(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, na, H, W, 5 + nc) raw logits, anchor-major like the official code."""
        y = self.im[i](self.preds[i](self.ia[i](x)))
        b, _, h, w = y.shape
        return y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous()


class HeadLevel(nn.Module):
    def __init__(self, c_in: int, c_stem: int, num_outputs: int, *, eps: float) -> None:
        super().__init__()
        self.stem = ConvBNAct(c_in, c_stem, 3, eps=eps)
        self.pred = nn.Conv2d(c_stem, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stem only: the head applies the implicit layers around `pred`."""
        return self.stem(x)


class StemmedImplicitHead(_ImplicitHeadBase):
    """Main-branch head: per level a 3x3 stem then the implicit 1x1 prediction.

    Registration order follows the cfg: all ImplicitA, all ImplicitM, then (stem, pred) per level.
    """

    def __init__(
        self, widths: list[int], stem_widths: list[int], num_anchors: int, nc: int, *, eps: float
    ) -> None:
        super().__init__(num_anchors, nc)
        out = num_anchors * (nc + 5)
        self.ia = nn.ModuleList(ImplicitA(c) for c in stem_widths)
        self.im = nn.ModuleList(ImplicitM(out) for _ in widths)
        self.levels = nn.ModuleList(
            HeadLevel(c, s, out, eps=eps) for c, s in zip(widths, stem_widths, strict=True)
        )

    @property
    def preds(self) -> list[nn.Conv2d]:
        return [cast(HeadLevel, level).pred for level in self.levels]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            self._predict(i, level(x)) for i, (level, x) in enumerate(zip(self.levels, feats, strict=True))
        ]


class ImplicitHead(_ImplicitHeadBase):
    """Paper-branch head (official `IDetect`): stems live in the neck; registers preds, ia, im."""

    def __init__(self, widths: list[int], num_anchors: int, nc: int) -> None:
        super().__init__(num_anchors, nc)
        out = num_anchors * (nc + 5)
        self.pred_convs = nn.ModuleList(nn.Conv2d(c, out, 1) for c in widths)
        self.ia = nn.ModuleList(ImplicitA(c) for c in widths)
        self.im = nn.ModuleList(ImplicitM(out) for _ in widths)

    @property
    def preds(self) -> list[nn.Conv2d]:
        return [cast(nn.Conv2d, conv) for conv in self.pred_convs]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self._predict(i, x) for i, x in enumerate(feats)]


def decode(raw: list[torch.Tensor], anchors: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """Decode raw head maps to the official inference layout.

    raw: per level (B, na, ny, nx, 5 + nc) logits; anchors: (nl, na, 2) float32 in input pixels.
    Returns (B, N, 5 + nc) float32: cx, cy, w, h in input pixels, then sigmoid objectness and class
    scores; rows ordered (level, anchor, y, x). Built with cat instead of in-place slice writes so the
    ONNX graph has no ScatterND.
    """
    out = []
    for i, p in enumerate(raw):
        b, na, ny, nx, no = p.shape
        y = p.sigmoid()
        gy, gx = torch.meshgrid(
            torch.arange(ny, device=p.device, dtype=p.dtype),
            torch.arange(nx, device=p.device, dtype=p.dtype),
            indexing="ij",
        )
        grid = torch.stack((gx, gy), -1).view(1, 1, ny, nx, 2)
        xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * strides[i]
        wh = (y[..., 2:4] * 2.0) ** 2 * anchors[i].view(1, na, 1, 1, 2).to(p.dtype)
        out.append(torch.cat([xy, wh, y[..., 4:]], -1).view(b, -1, no))
    return torch.cat(out, 1)


def topk_candidates(pred: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, 5 + nc) decoded predictions -> (B, k, 6) best-class boxes sorted by score.

    score = obj * max class score, class = argmax (first on ties), box = xywh -> xyxy.
    """
    cls_scores, cls_ids = pred[..., 5:].max(-1)
    scores = pred[..., 4] * cls_scores
    top_scores, idx = scores.topk(k, dim=1, largest=True, sorted=True)
    xy, wh = pred[..., 0:2], pred[..., 2:4]
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    top_boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
    top_cls = cls_ids.gather(1, idx).to(pred.dtype)
    return torch.cat([top_boxes, top_scores.unsqueeze(-1), top_cls.unsqueeze(-1)], -1)
