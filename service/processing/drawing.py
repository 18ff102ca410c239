"""Boxes and labels drawn onto an image (OpenCV), and JPEG encoding, for `POST /detect/annotated`."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from service.processing import Detections

FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, saturated RGB colour per class (golden-ratio hue steps keep neighbours apart)."""
    hue = int((class_id * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 220, 255]]], dtype=np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def draw_detections(
    image: npt.NDArray[np.uint8],
    detections: Detections,
    class_names: Sequence[str],
    track_ids: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.uint8]:
    """A copy of the (H, W, 3) RGB `image` with each box and a "name score" label drawn on it; with
    `track_ids` (one per detection, -1: none) a tracked box is labelled "#id name score" and
    coloured by its id, so one object keeps its colour through a video.

    Boxes are xyxy in the image's pixels. Line width and font scale grow with the image size.
    """
    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 400))
    scale = max(0.4, min(height, width) / 1200)
    ids = track_ids.tolist() if track_ids is not None else [-1] * len(detections.scores)
    rows = zip(detections.boxes, detections.scores, detections.class_ids, ids, strict=True)
    for box, score, class_id, track_id in rows:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        color = class_color(int(track_id if track_id >= 0 else class_id))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
        label = f"#{track_id} {name} {float(score):.2f}" if track_id >= 0 else f"{name} {float(score):.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, FONT, scale, max(1, thickness - 1))
        top = y1 - text_h - baseline if y1 - text_h - baseline >= 0 else y1  # inside when no room above
        cv2.rectangle(canvas, (x1, top), (x1 + text_w, top + text_h + baseline), color, cv2.FILLED)
        cv2.putText(
            canvas,
            label,
            (x1, top + text_h),
            FONT,
            scale,
            (255, 255, 255),
            max(1, thickness - 1),
            cv2.LINE_AA,
        )
    return canvas


def encode_jpeg(image: npt.NDArray[np.uint8], quality: int = 90) -> bytes:
    """JPEG bytes of an (H, W, 3) RGB image."""
    ok, buffer = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()
