"""An annotated clip encoded as it is made, for `POST /detect/video?annotated=true`: frames in, the
encoded bytes out as soon as the muxer writes them, so the answer streams while the clip is read.

H.264 in fragmented MP4 when the installed FFmpeg has an H.264 encoder (browsers play it as it
arrives: `frag_keyframe+empty_moov`, no seek back to write an index), else VP9 in WebM. Blocking
work (one call at a time per clip), run in the decode pool; PyAV is imported when a writer is made.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class VideoFormat:
    container: str  # FFmpeg muxer
    codec: str  # FFmpeg encoder
    media_type: str
    options: dict[str, str]  # the muxer's
    codec_options: dict[str, str]


MP4 = VideoFormat(
    "mp4",
    "libx264",
    "video/mp4",
    {"movflags": "frag_keyframe+empty_moov+default_base_moof"},
    {"preset": "veryfast", "crf": "23"},
)
WEBM = VideoFormat("webm", "libvpx-vp9", "video/webm", {}, {"deadline": "realtime", "cpu-used": "8"})


def best_format() -> VideoFormat:
    """MP4/H.264 when this FFmpeg can encode H.264, else WebM/VP9."""
    import av

    try:
        av.codec.Codec(MP4.codec, "w")
    except (av.FFmpegError, ValueError):
        return WEBM
    return MP4


class _Sink(io.RawIOBase):
    """What the muxer writes, kept until `take` hands it out."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


class AnnotatedVideoWriter:
    """Encodes RGB frames of one size at `fps`; `add` and `close` return the bytes written since
    the last call. Odd frame sides are cut by one pixel (4:2:0 chroma needs even ones)."""

    def __init__(self, width: int, height: int, fps: float, video_format: VideoFormat) -> None:
        import av

        self.format, self._sink = video_format, _Sink()
        self.width, self.height = width - width % 2, height - height % 2
        container = av.open(self._sink, mode="w", format=video_format.container, options=video_format.options)
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        stream = container.add_stream(video_format.codec, rate=rate, options=video_format.codec_options)
        self._container, self._stream = cast(Any, container), cast(Any, stream)
        self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, "yuv420p"
        self._av, self._count, self._time_base = av, 0, 1 / rate

    def add(self, image: npt.NDArray[np.uint8]) -> bytes:
        frame = self._av.VideoFrame.from_ndarray(
            np.ascontiguousarray(image[: self.height, : self.width]), format="rgb24"
        )
        frame.pts = self._count
        frame.time_base = self._time_base
        self._count += 1
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def close(self) -> bytes:
        """Flush the encoder and end the container; the last bytes."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()
