"""Video clips: open one with PyAV (FFmpeg's bindings), check it against the server's limits, and
read its frames as RGB images, every `stride`-th one.

Blocking work, run in the decode pool one call at a time per clip (a container is not thread-safe).
PyAV is imported when a clip is opened, so the rest of the server runs without it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from service.core.errors import InvalidVideo, TooManyPixels, UnsupportedVideo, VideoTooLong

if TYPE_CHECKING:
    from service.settings import Settings


@dataclass(frozen=True)
class VideoLimits:
    """What a clip may be: frames read at most, seconds, pixels per frame, and the containers and
    codecs allowed (FFmpeg's names, e.g. "mp4", "matroska", "h264"; empty: any)."""

    max_frames: int
    max_seconds: float
    max_pixels: int
    containers: frozenset[str] = frozenset()
    codecs: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Settings) -> VideoLimits:
        """The server's limits (`YOLOR_MAX_VIDEO_*`, `YOLOR_VIDEO_*`, `YOLOR_MAX_IMAGE_PIXELS`)."""
        return cls(
            max_frames=settings.max_video_frames,
            max_seconds=settings.max_video_seconds,
            max_pixels=settings.max_image_pixels,
            containers=frozenset(settings.video_containers),
            codecs=frozenset(settings.video_codecs),
        )


@dataclass(frozen=True)
class Frame:
    index: int  # in decode order, counting every frame read (not only the processed ones)
    pts_s: float | None  # presentation time in seconds (None when the stream has none)
    image: npt.NDArray[np.uint8]  # (h, w, 3) RGB


@dataclass(frozen=True)
class VideoInfo:
    container: str
    codec: str
    width: int
    height: int
    fps: float | None  # the stream's average frame rate, when it declares one
    duration_s: float | None
    frames: int | None  # frames the container declares, when it does

    def rate(self, stride: int) -> float:
        """Frames per second of every `stride`-th frame (a clip declaring no rate: taken as 30), the
        rate the tracker scales its buffer by and the annotated video is encoded at."""
        return (self.fps or 30.0) / stride


class VideoClip:
    """An open clip, which owns `source` (closed with it, and on a failed open).
    `frames(stride, max_frames)` reads it once; `read` counts the frames decoded.

    Opening checks what the container declares (container and codec allowed, frame size, duration,
    frame count); decoding checks again what it finds (more frames or a later timestamp than
    declared, a frame of another size), so a clip that lies in its header is stopped all the same.
    Raises InvalidVideo (not a video, corrupt), UnsupportedVideo (container or codec not allowed),
    TooManyPixels and VideoTooLong.
    """

    def __init__(self, source: IO[bytes], limits: VideoLimits) -> None:
        import av

        self._av, self.limits, self.read, self._source = av, limits, 0, source
        try:
            self._container: Any = av.open(source, mode="r")
        except (av.FFmpegError, ValueError) as e:
            source.close()
            raise InvalidVideo(f"not a readable video file: {e}") from None
        try:
            self.info = self._check(self._container)
        except BaseException:
            self.close()
            raise

    def _check(self, container: Any) -> VideoInfo:
        if not container.streams.video:
            raise InvalidVideo("the file has no video stream")
        stream = container.streams.video[0]
        names = set(container.format.name.split(","))  # e.g. "mov,mp4,m4a,3gp,3g2,mj2"
        if self.limits.containers and not names & self.limits.containers:
            allowed = ", ".join(sorted(self.limits.containers))
            raise UnsupportedVideo(f"container {container.format.name!r} is not allowed (allowed: {allowed})")
        codec = stream.codec_context.name
        if self.limits.codecs and codec not in self.limits.codecs:
            allowed = ", ".join(sorted(self.limits.codecs))
            raise UnsupportedVideo(f"codec {codec!r} is not allowed (allowed: {allowed})")
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        self._check_size(width, height)
        duration = seconds(stream.duration, stream.time_base)
        if duration is None and container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        if duration is not None and duration > self.limits.max_seconds:
            raise VideoTooLong(f"the clip lasts {duration:.1f} s; at most {self.limits.max_seconds:g} s")
        declared = int(stream.frames) or None
        if declared is not None and declared > self.limits.max_frames:
            raise VideoTooLong(f"the clip has {declared} frames; at most {self.limits.max_frames}")
        rate = stream.average_rate
        return VideoInfo(
            container=container.format.name,
            codec=codec,
            width=width,
            height=height,
            fps=float(rate) if rate else None,
            duration_s=duration,
            frames=declared,
        )

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self.limits.max_pixels:
            raise TooManyPixels(
                f"frames of {width}x{height} pixels; at most {self.limits.max_pixels} pixels per frame"
            )

    def frames(self, stride: int = 1, max_frames: int | None = None) -> Generator[Frame, None, None]:
        """Every `stride`-th frame (the first, then stride later, ...), at most `max_frames` of them.
        A decoding error after the first frame ends the iteration with InvalidVideo."""
        processed = 0
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads for this one decode
        try:
            for frame in self._container.decode(stream):
                index = self.read
                self.read += 1
                if self.read > self.limits.max_frames:
                    raise VideoTooLong(f"the clip has more than {self.limits.max_frames} frames")
                pts_s = seconds(frame.pts, frame.time_base)
                if pts_s is not None and pts_s > self.limits.max_seconds:
                    raise VideoTooLong(f"the clip runs past {self.limits.max_seconds:g} s")
                if index % stride:
                    continue
                self._check_size(frame.width, frame.height)
                yield Frame(index, pts_s, upright(frame))
                processed += 1
                if max_frames is not None and processed >= max_frames:
                    return
        except self._av.FFmpegError as e:
            raise InvalidVideo(f"decoding failed after {self.read} frames: {e}") from None

    def close(self) -> None:
        """Not while `frames` is being read in another thread (the container is not thread-safe)."""
        try:
            self._container.close()
        finally:
            self._source.close()


def upright(frame: Any) -> npt.NDArray[np.uint8]:
    """A decoded PyAV frame as (h, w, 3) RGB, turned as its display matrix says (a phone's portrait
    clip is stored landscape with a rotation to show it upright), as players show it and as /detect
    applies a photo's EXIF orientation."""
    image = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def seconds(value: int | None, time_base: Fraction | None) -> float | None:
    """A PyAV timestamp (pts, duration) in seconds; None when the stream has none."""
    if value is None or time_base is None:
        return None
    return float(value * time_base)
