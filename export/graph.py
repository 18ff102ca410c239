"""The module that is traced into ONNX: fused net + decode + output head.

Heads (their layouts are defined once, in `service.processing.heads`):
- `raw`: (B, N, 5 + nc), the official inference layout (cx, cy, w, h, obj, class scores);
- `topk`: (B, K, 6) x1, y1, x2, y2 (input pixels), score = obj * best class score, class id; the K best
  candidates per image sorted by score. Thresholds and NMS stay on the host, per request.

With fp16 the net runs in half precision and its raw maps are cast back to float32 before the decode
and the top-K, so the graph's input and output stay float32 and box coordinates keep full precision.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from service.processing.heads import Head
from yolor.heads import decode, topk_candidates
from yolor.model import YOLOR


class ExportGraph(nn.Module):
    """images float32 (B, 3, S, S) RGB in [0, 1] -> the chosen head's output (float32)."""

    anchors: torch.Tensor

    def __init__(self, fused: YOLOR, head: Head, top_k: int | None = None, fp16: bool = False) -> None:
        super().__init__()
        if head == "topk" and (top_k is None or top_k < 1):
            raise ValueError("the topk head needs top_k >= 1")
        self.model = copy.deepcopy(fused).eval()
        self.dtype = torch.float16 if fp16 else torch.float32
        self.model.to(self.dtype)
        self.register_buffer("anchors", fused.anchors.detach().float().clone())
        self.strides = fused.strides
        self.head, self.top_k = head, top_k

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = [r.float() for r in self.model.raw_outputs(images.to(self.dtype))]
        pred = decode(raw, self.anchors, self.strides)
        if self.head == "raw":
            return pred
        assert self.top_k is not None
        return topk_candidates(pred, min(self.top_k, pred.shape[1]))
