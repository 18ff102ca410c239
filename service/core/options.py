"""The detect parameters, the same for every transport: their bounds (`DetectFields`, which each
transport's request model extends with its raw forms of `classes` and `tile`) and the one conversion
to `DetectOptions`, what the detector takes.

Raw forms: the query string sends strings (`classes` repeated or comma-separated, `tile` a word),
JSON sends `classes` as a list of ids or names and `tile` as a boolean or "auto", KServe v2
parameters send `classes` as one comma-separated string and `tile` as a boolean or a word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field

from service.core.errors import InvalidParameter
from service.core.repository import MODEL_NAME
from service.core.tiling import DEFAULT_MERGE, DEFAULT_OVERLAP, MAX_OVERLAP, MAX_SIZE, MIN_SIZE, TileOptions
from service.processing import MergeMode
from service.tracking import TrackerSettings

# The post-processing parameters' bounds, for JSON bodies and query strings alike.
CONF_BOUNDS: dict[str, Any] = {"ge": 0.0, "le": 1.0, "description": "keep detections with score > conf"}
IOU_BOUNDS: dict[str, Any] = {"ge": 0.0, "le": 1.0, "description": "NMS IoU threshold"}
MAX_DET_BOUNDS: dict[str, Any] = {"ge": 1, "le": 10_000, "description": "most detections per image"}

TILE_BOUNDS: dict[str, Any] = {
    "description": "sliced inference: false, true (any image larger than a window) or auto (only an "
    "image more than twice the model input)"
}
TILE_SIZE_BOUNDS: dict[str, Any] = {
    "ge": MIN_SIZE,
    "le": MAX_SIZE,
    "description": "window side in image pixels (default: the model input, grown to fit the tile limit)",
}
TILE_OVERLAP_BOUNDS: dict[str, Any] = {
    "ge": 0.0,
    "le": MAX_OVERLAP,
    "description": "neighbouring windows' overlap",
}
TILE_MERGE_DESCRIPTION = "merging of overlapping windows' detections: nmm (union of the matches) or nms"

Conf = Annotated[float, Field(**CONF_BOUNDS)]
Iou = Annotated[float, Field(**IOU_BOUNDS)]
MaxDet = Annotated[int, Field(**MAX_DET_BOUNDS)]
TileSize = Annotated[int | None, Field(**TILE_SIZE_BOUNDS)]
TileOverlap = Annotated[float, Field(**TILE_OVERLAP_BOUNDS)]

DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET = 0.25, 0.45, 300


NO_TILING = TileOptions()


@dataclass(frozen=True)
class DetectOptions:
    """A request's detect parameters, validated, whatever the transport. `classes`: ids and/or names
    as sent (resolved against the served model's names by `Detector.params`); None: all."""

    conf: float = DEFAULT_CONF
    iou: float = DEFAULT_IOU
    max_det: int = DEFAULT_MAX_DET
    classes: tuple[int | str, ...] | None = None
    agnostic: bool = False
    tile: TileOptions = NO_TILING


@dataclass(frozen=True)
class DetectParams:
    """A request's parameters for the model it holds: `classes` resolved to its ids (None: all)."""

    conf: float = DEFAULT_CONF
    iou: float = DEFAULT_IOU
    max_det: int = DEFAULT_MAX_DET
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    tile: TileOptions = NO_TILING

    @classmethod
    def of(cls, options: DetectOptions, class_names: Sequence[str]) -> DetectParams:
        """`options` for a model with `class_names`; InvalidParameter for a class it does not have."""
        return cls(
            conf=options.conf,
            iou=options.iou,
            max_det=options.max_det,
            classes=resolve_classes(options.classes, class_names),
            agnostic=options.agnostic,
            tile=options.tile,
        )


def resolve_classes(values: Sequence[int | str] | None, class_names: Sequence[str]) -> tuple[int, ...] | None:
    """Class ids from ids and/or names (a string may hold several, comma-separated: "person,2").

    Raises InvalidParameter for an unknown name or an id outside [0, nc).
    """
    if not values:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    ids: list[int] = []
    for value in values:
        parts = [value] if isinstance(value, int) else [p.strip() for p in value.split(",") if p.strip()]
        for part in parts:
            if isinstance(part, str) and part in index:
                ids.append(index[part])
            elif isinstance(part, int) or part.lstrip("-").isdigit():
                class_id = int(part)
                if not 0 <= class_id < len(class_names):
                    raise InvalidParameter(f"class id {class_id} is outside [0, {len(class_names)})")
                ids.append(class_id)
            else:
                raise InvalidParameter(f"unknown class {part!r}")
    return tuple(sorted(set(ids))) or None


class DetectFields(BaseModel):
    """The fields and bounds every transport's detect parameters share. A transport's model declares
    `classes` and `tile` in its raw form and turns into `DetectOptions` with `options()`."""

    conf: Conf = DEFAULT_CONF
    iou: Iou = DEFAULT_IOU
    max_det: MaxDet = DEFAULT_MAX_DET
    classes: Any = None  # each transport: its raw form (a list, a comma-separated string)
    agnostic: bool = Field(False, description="NMS across classes")
    tile: Any = False  # each transport: its raw form (a boolean, a word)
    tile_size: TileSize = None
    tile_overlap: TileOverlap = DEFAULT_OVERLAP
    tile_merge: MergeMode = Field(DEFAULT_MERGE, description=TILE_MERGE_DESCRIPTION)

    def options(self) -> DetectOptions:
        return DetectOptions(
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
            classes=class_list(self.classes),
            agnostic=self.agnostic,
            tile=TileOptions.of(self.tile, self.tile_size, self.tile_overlap, self.tile_merge),
        )


def class_list(value: str | Sequence[int | str] | None) -> tuple[int | str, ...] | None:
    """Ids and names as one tuple: a string (or each string of a list) may hold several,
    comma-separated ("person,2"); digits stay strings here (a name may be digits too)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for item in items:
        out.extend([item] if isinstance(item, int) else [p.strip() for p in item.split(",") if p.strip()])
    return tuple(out) or None


TRACKING = TrackerSettings()  # the defaults the parameters document


class ModelChoice(BaseModel):
    """Which loaded model answers (service.core.model_set): a request's `model` and `version`."""

    model: str | None = Field(
        None, pattern=MODEL_NAME, description="a loaded model's name (default: the default model)"
    )
    version: int | None = Field(None, ge=1, description="the model's version (default: its newest loaded)")


class TrackingFields(BaseModel):
    """Multi-object tracking's parameters, as `/detect/video` and streams take them."""

    track: bool = Field(False, description="multi-object tracking (ByteTrack): a track_id per detection")
    track_high_thresh: float = Field(
        TRACKING.track_high_thresh, ge=0, le=1, description="tracking: first-association score"
    )
    track_low_thresh: float = Field(
        TRACKING.track_low_thresh, ge=0, le=1, description="tracking: lowest score associated (second pass)"
    )
    new_track_thresh: float = Field(
        TRACKING.new_track_thresh, ge=0, le=1, description="tracking: lowest score that starts a track"
    )
    match_thresh: float = Field(
        TRACKING.match_thresh, ge=0, le=1, description="tracking: largest match cost (1 - IoU x score)"
    )
    track_buffer: int = Field(
        TRACKING.track_buffer, ge=0, le=10_000, description="tracking: frames (at 30 fps) a lost track waits"
    )

    def tracker_settings(self, frame_rate: float) -> TrackerSettings:
        """The tracker's settings for a clip processed at `frame_rate` frames/s (InvalidParameter
        when the thresholds do not fit together)."""
        try:
            return TrackerSettings(
                track_high_thresh=self.track_high_thresh,
                track_low_thresh=self.track_low_thresh,
                new_track_thresh=self.new_track_thresh,
                match_thresh=self.match_thresh,
                track_buffer=self.track_buffer,
                frame_rate=frame_rate,
            )
        except ValueError as e:
            raise InvalidParameter(f"tracking: {e}") from None
