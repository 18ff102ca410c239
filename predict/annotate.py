"""`--save-annotated`: an image with its detections drawn, as `POST /detect/annotated` draws them
(decoded as the server decodes, EXIF orientation applied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predict.engine import Record
from service.core.images import decode_image
from service.processing import Detections
from service.processing.drawing import draw_detections, encode_jpeg

ANY_SIZE = 1 << 40  # the engine has already accepted the image


def record_detections(record: Record) -> Detections:
    """A record's detections as the arrays `draw_detections` takes."""
    found = record["detections"]
    return Detections(
        boxes=np.array([d["box"] for d in found], np.float32).reshape(-1, 4),
        scores=np.array([d["score"] for d in found], np.float32),
        class_ids=np.array([d["class_id"] for d in found], np.int64),
    )


def save_annotated(path: Path, data: bytes, record: Record, class_names: list[str]) -> None:
    """The image in `data` with `record`'s boxes drawn, as a JPEG at `path`."""
    image = decode_image(data, ANY_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(draw_detections(image, record_detections(record), class_names)))
