"""`--save-annotated`: an image with its detections drawn, as `POST /detect/annotated` draws them
(decoded as the server decodes, EXIF orientation applied); a video's processed frames drawn and
encoded as `POST /detect/video?annotated=true` answers them (the clip decoded again here, so it
works the same over `--url`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from predict.engine import Record
from service.core.images import decode_image
from service.core.video import upright
from service.core.video_writer import AnnotatedVideoWriter, best_format
from service.processing import Detections
from service.processing.drawing import draw_detections, encode_jpeg

ANY_SIZE = 1 << 40  # the engine has already accepted the image


def record_track_ids(record: Record) -> npt.NDArray[np.int64] | None:
    """The record's track ids (-1: untracked), or None when it was not tracked."""
    found = record["detections"]
    if not found or "track_id" not in found[0]:
        return None
    return np.array([-1 if d["track_id"] is None else d["track_id"] for d in found], np.int64)


def save_annotated_video(
    path: Path, clip: Path, frames: list[Record], class_names: list[str], stride: int
) -> Path:
    """The clip's frames named in `frames` (their `frame` indexes, every `stride`-th) with their
    boxes drawn, encoded next to `path` (its suffix made .mp4 or .webm, as the encoder allows) at
    the rate the server's annotated answer has; the file written."""
    import av

    wanted = {record["frame"]: record for record in frames}
    video_format = best_format()
    target = path.with_suffix("." + video_format.container)
    target.parent.mkdir(parents=True, exist_ok=True)
    writer: AnnotatedVideoWriter | None = None
    with av.open(str(clip)) as container, target.open("wb") as out:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        for index, frame in enumerate(container.decode(stream)):
            record = wanted.get(index)
            if record is None:
                continue
            image = upright(frame)
            if writer is None:
                writer = AnnotatedVideoWriter(image.shape[1], image.shape[0], fps / stride, video_format)
            drawn = draw_detections(image, record_detections(record), class_names, record_track_ids(record))
            out.write(writer.add(drawn))
        if writer is not None:
            out.write(writer.close())
    return target


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
