"""Small video clips for the tests, encoded with PyAV (the server's FFmpeg bindings)."""

from __future__ import annotations

import io

import cv2
import numpy as np

from service.settings import DEMO_MODEL_DIR

FRAMES = 12
FPS = 10


def sample_frames(count: int = FRAMES) -> list[np.ndarray]:
    """The demo model's sample photo cropped to 192x256 (even sides, as yuv420p needs), rolled 6 px
    further each frame: shapes the demo model finds, moving."""
    sample = cv2.cvtColor(cv2.imread(str(DEMO_MODEL_DIR / "sample.jpg")), cv2.COLOR_BGR2RGB)[:256, :192]
    return [np.ascontiguousarray(np.roll(sample, 6 * i, axis=1)) for i in range(count)]


def make_clip(frames: list[np.ndarray] | None = None, fmt: str = "mp4", codec: str = "libx264") -> bytes:
    """`frames` (default `sample_frames()`) as a `fmt` file at FPS frames per second."""
    import av

    frames = sample_frames() if frames is None else frames
    height, width = frames[0].shape[:2]
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def decoded_frames(clip: bytes) -> list[np.ndarray]:
    """The clip's frames as the server's decoder gives them (the same FFmpeg)."""
    import av

    with av.open(io.BytesIO(clip)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


# An MP4 track header's display matrix (16.16 fixed point, the last column 2.30): what a phone writes
# for a portrait clip stored landscape, shown turned 90 degrees clockwise.
PORTRAIT = (0, 0x00010000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)


def with_display_matrix(mp4: bytes, matrix: tuple[int, ...] = PORTRAIT) -> bytes:
    """`mp4` with its (one) track header's display matrix replaced (a version-0 `tkhd` box)."""
    import struct

    data = bytearray(mp4)
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0, "one version-0 tkhd box expected"
    # after the type: version/flags, creation, modification, track id, reserved, duration (4 each),
    # reserved (8), layer, alternate group, volume, reserved (2 each): then the 3x3 matrix
    struct.pack_into(">9I", data, at + 4 + 6 * 4 + 8 + 4 * 2, *matrix)
    return bytes(data)
