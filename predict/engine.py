"""What `predict.run` asks of an engine (in-process or over HTTP), and the one error it reports per item.

Records are the JSON objects of predictions.jsonl without their `source`: an image's
`{width, height, detections}`, a video frame's `{frame, pts_s, width, height, detections}`, a video's
last `{summary}`; each detection `{box: [x1, y1, x2, y2] pixels, score, class_id, class_name}`, as
`POST /detect` and `POST /detect/video` answer them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Record = dict[str, Any]


class StartError(Exception):
    """The engine cannot start: no server at the URL, a refused key, a class the model does not have."""


@dataclass(frozen=True)
class Filters:
    """The detect parameters given on the command line (None: the model's or server's default)."""

    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    classes: tuple[str, ...] | None = None  # ids and/or names

    def given(self) -> dict[str, float | int | tuple[str, ...]]:
        values = {"conf": self.conf, "iou": self.iou, "max_det": self.max_det, "classes": self.classes}
        return {name: value for name, value in values.items() if value is not None}


class ItemError(Exception):
    """One source failed (unreadable, undecodable, refused by the server): reported and skipped."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Engine(Protocol):
    class_names: list[str]
    model_version: str  # e.g. "yolor-p6 onnxruntime fp32", for Label Studio
    max_batch: int  # the batch size the model runs at most (sizes the default concurrency)

    async def image(self, data: bytes) -> Record:
        """One image file's record; ItemError when it is refused."""
        ...

    def video(self, path: Path, stride: int, track: bool = False) -> AsyncIterator[Record]:
        """Each processed frame's record as it is ready, then the summary record; ItemError when the
        clip is refused or breaks (after the frames answered before it). `track`: ByteTrack ids
        (`track_id` per detection, the tracks in the summary), as `POST /detect/video?track=true`."""
        ...

    async def close(self) -> None: ...
