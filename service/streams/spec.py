"""What a client asks for in `POST /streams`, and what the server keeps to reopen it after a restart:
the source, its frame rate cap, the detection and tracking parameters, the lines and zones counted,
and an optional webhook for their events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.core.errors import InvalidParameter
from service.core.options import TILE_BOUNDS, DetectFields, ModelChoice, TrackingFields, resolve_classes
from service.streams.counting import DEFAULT_ANCHOR, Anchor, Line, Zone

Coordinate = Annotated[float, Field(ge=0.0, le=1.0)]
Point = tuple[Coordinate, Coordinate]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Classes = Annotated[list[int | str] | None, Field(description="class ids or names counted (default: all)")]
EventKind = Literal["line.cross", "zone.enter", "zone.exit"]
EVENT_KINDS: tuple[EventKind, ...] = ("line.cross", "zone.enter", "zone.exit")
MAX_FPS = 60.0


class LineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    start: Point = Field(description="normalised (x, y): 0..1 of the frame's width and height, y down")
    end: Point
    classes: Classes = None
    anchor: Anchor = Field(DEFAULT_ANCHOR, description="the point of a box that crosses")

    def line(self, class_names: Sequence[str]) -> Line:
        return Line(self.name, self.start, self.end, _class_ids(self.classes, class_names), self.anchor)


class ZoneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    polygon: list[Point] = Field(min_length=3, max_length=64, description="normalised (x, y) corners")
    classes: Classes = None
    anchor: Anchor = Field(DEFAULT_ANCHOR, description="the point of a box that is in or out")

    def zone(self, class_names: Sequence[str]) -> Zone:
        return Zone(self.name, tuple(self.polygon), _class_ids(self.classes, class_names), self.anchor)


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", max_length=2048, description="where events are POSTed")
    secret: str | None = Field(
        None, min_length=16, max_length=256, description="HMAC-SHA256 key signing each body (recommended)"
    )
    events: list[EventKind] = Field(list(EVENT_KINDS), min_length=1, description="the event kinds sent")


class StreamSpec(DetectFields, TrackingFields, ModelChoice):
    """A stream's definition (the body of `POST /streams`); `model` and `version` choose the model its
    frames run on (default: the default model's newest version, whichever that is at each frame)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        min_length=1,
        max_length=4096,
        description="rtsp://, rtsps://, http(s):// (MJPEG or HLS), or a file under YOLOR_STREAM_ROOT",
    )
    name: str | None = Field(None, max_length=128, description="a label for people")
    fps: float = Field(5.0, gt=0, le=MAX_FPS, description="most frames per second detected")
    loop: bool = Field(False, description="a file source starts over at its end (cameras: ignored)")
    classes: list[int | str] | None = Field(None, description="class ids or names to keep (default: all)")
    tile: Annotated[bool | Literal["auto"], Field(**TILE_BOUNDS)] = False
    lines: list[LineSpec] = Field([], max_length=32, description="lines whose crossings are counted")
    zones: list[ZoneSpec] = Field([], max_length=32, description="zones whose entries and exits are counted")
    webhook: WebhookSpec | None = None

    @model_validator(mode="after")
    def _counting_needs_tracks(self) -> StreamSpec:
        if (self.lines or self.zones) and not self.track:
            raise ValueError("lines and zones count tracks: set track to true")
        names = [line.name for line in self.lines] + [zone.name for zone in self.zones]
        if len(set(names)) != len(names):
            raise ValueError("line and zone names must be unique")
        return self

    def counting(self, class_names: Sequence[str]) -> tuple[tuple[Line, ...], tuple[Zone, ...]]:
        """The lines and zones for a model with `class_names` (InvalidParameter: a class it lacks)."""
        try:
            lines = tuple(x.line(class_names) for x in self.lines)
            zones = tuple(x.zone(class_names) for x in self.zones)
        except ValueError as e:
            raise InvalidParameter(str(e)) from None
        return lines, zones


def _class_ids(values: list[int | str] | None, class_names: Sequence[str]) -> frozenset[int] | None:
    ids = resolve_classes(values, class_names)
    return frozenset(ids) if ids is not None else None
