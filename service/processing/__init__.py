"""Pure numpy + OpenCV pre/post-processing for YOLOR inference (never imports torch)."""

from service.processing.boxes import box_ios, box_iou, xywh_to_xyxy
from service.processing.heads import HEADS, Candidates, Head, HeadLayout, head_layout
from service.processing.letterbox import (
    Letterbox,
    letterbox,
    letterbox_boxes,
    letterbox_tensor,
    scale_boxes,
    to_input_tensor,
)
from service.processing.nms import (
    MERGE_MODES,
    Detections,
    MergeMode,
    batched_nms,
    decode_raw_predictions,
    merge_detections,
    nms,
    select_detections,
)

__all__ = [
    "HEADS",
    "MERGE_MODES",
    "Candidates",
    "Detections",
    "Head",
    "HeadLayout",
    "Letterbox",
    "MergeMode",
    "batched_nms",
    "box_ios",
    "box_iou",
    "decode_raw_predictions",
    "head_layout",
    "letterbox",
    "letterbox_boxes",
    "letterbox_tensor",
    "merge_detections",
    "nms",
    "scale_boxes",
    "select_detections",
    "to_input_tensor",
    "xywh_to_xyxy",
]
