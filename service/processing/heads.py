"""The two output heads of an exported YOLOR graph: what one image's output rows mean.

This is the single place that knows a head's layout. Export writes its name, columns and shape
into the manifest, the server checks a backend against it and splits rows with it, and export
validation and `yolor eval` read exported outputs through it.

- `topk`: `(K, 6)` rows `x1, y1, x2, y2, score, class_id` in input pixels (score = obj * best class
  score), the K best candidates sorted by score. The class id is a float in the graph; it is read
  by rounding to the nearest integer (a float-coded integer must not lose 1 to truncation).
- `raw`: `(N, 5 + nc)` rows `cx, cy, w, h, obj, cls_0 .. cls_{nc-1}`, the official inference
  layout, decoded on the host as official YOLOR NMS does (`decode_raw_predictions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from service.processing.nms import decode_raw_predictions

Head = Literal["topk", "raw"]
HEADS: tuple[Head, ...] = get_args(Head)

# (boxes (K, 4) float32 xyxy in input pixels, scores (K,) float32, class ids (K,) int64)
Candidates = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]

TOPK_COLUMNS = ("x1", "y1", "x2", "y2", "score", "class_id")
RAW_BOX_COLUMNS = ("cx", "cy", "w", "h", "obj")


@dataclass(frozen=True)
class HeadLayout:
    """One head's contract: output tensor name, columns, per-image shape, and how to read a row."""

    name: Head
    output_name: str

    def columns(self, class_names: list[str]) -> list[str]:
        if self.name == "topk":
            return list(TOPK_COLUMNS)
        return [*RAW_BOX_COLUMNS, *class_names]

    def image_shape(self, nc: int, top_k: int | None) -> tuple[int | None, int]:
        """One image's output shape; None for the raw head's row count (set by the input size)."""
        if self.name == "topk":
            if top_k is None or top_k < 1:
                raise ValueError("the topk head needs top_k >= 1")
            return (top_k, len(TOPK_COLUMNS))
        return (None, len(RAW_BOX_COLUMNS) + nc)

    def candidates(self, output: npt.ArrayLike, conf: float, *, multi_label: bool = False) -> Candidates:
        """One image's output -> the candidates scoring above `conf`, in row order.

        `multi_label` (raw head only) keeps every class above `conf` per box, as official test.py does;
        the topk head has already kept one class per box, so it raises ValueError there.
        """
        rows = np.asarray(output, dtype=np.float32)
        if self.name == "raw":
            return decode_raw_predictions(rows, conf, multi_label=multi_label)
        if multi_label:
            raise ValueError("the top-K head keeps one class per box; export with --head raw for multi-label")
        if rows.ndim != 2 or rows.shape[1] != len(TOPK_COLUMNS):
            raise ValueError(f"topk output must have shape (K, 6), got {rows.shape}")
        rows = rows[rows[:, 4] > conf]
        return rows[:, :4].copy(), rows[:, 4].copy(), np.rint(rows[:, 5]).astype(np.int64)


LAYOUTS: dict[Head, HeadLayout] = {
    "topk": HeadLayout("topk", output_name="detections"),
    "raw": HeadLayout("raw", output_name="predictions"),
}


def head_layout(name: str) -> HeadLayout:
    """The layout of head `name`; ValueError for an unknown one."""
    for layout in LAYOUTS.values():
        if layout.name == name:
            return layout
    raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
