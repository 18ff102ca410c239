"""The source reader against real sources: a clip played in real time and never dropped, an HTTP
MJPEG camera that goes away and comes back (reconnected with backoff), the newest-frame policy, the
fps cap (an MJPEG camera's unwanted frames never decoded), and a source that cannot be opened
(failed, with the reason)."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.cameras import MjpegCamera, jpegs
from service.streams.reader import FrameBuffer, SourceFrame, SourceReader, SourceSettings, SourceState
from tests.support.video import FPS, make_clip, sample_frames

pytest.importorskip("av")


def wait_for(condition, what: str, timeout_s: float = 20.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, what
        time.sleep(0.02)


class Taker:
    """Takes the buffer's frames in a thread, as the stream's task does, `delay_s` per frame."""

    def __init__(self, live: bool, delay_s: float = 0.0) -> None:
        self.frames: list[SourceFrame] = []
        self._wake = threading.Event()
        self.buffer = FrameBuffer(live, self._wake.set)
        self.delay_s = delay_s
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(0.05)
            self._wake.clear()
            frame = self.buffer.take()
            if frame is not None:
                self.frames.append(frame)
                time.sleep(self.delay_s)

    def stop(self) -> None:
        self._stop = True


@pytest.mark.slow  # real time, real servers
def test_a_file_plays_in_real_time_and_no_frame_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_clip(sample_frames(20)))
    taker = Taker(live=False, delay_s=0.15)  # slower than the clip's 10 fps: back-pressure, not drops
    reader = SourceReader(str(path), SourceSettings(live=False), taker.buffer)
    started = time.monotonic()
    reader.start()
    wait_for(lambda: reader.state is SourceState.ENDED and len(taker.frames) == 20, "the clip never ended")
    taker.stop()
    assert [f.index for f in taker.frames] == list(range(20))
    assert [f.pts_s for f in taker.frames] == pytest.approx([i / FPS for i in range(20)])
    assert time.monotonic() - started >= 19 * 0.15  # paced by the taker, who is slower than real time
    assert reader.stats.dropped == {} and reader.stats.decoded == 20


@pytest.mark.slow
def test_a_file_is_paced_at_its_frame_rate(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_clip(sample_frames(20)))
    taker = Taker(live=False)
    reader = SourceReader(str(path), SourceSettings(live=False), taker.buffer)
    reader.start()
    wait_for(lambda: reader.state is SourceState.ENDED, "the clip never ended")
    taker.stop()
    arrivals = [f.captured - taker.frames[0].captured for f in taker.frames]
    assert arrivals[-1] == pytest.approx(19 / FPS, abs=0.25)  # 1.9 s of video took ~1.9 s


@pytest.mark.slow
def test_the_fps_cap_hands_on_fewer_frames(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_clip(sample_frames(20)))
    taker = Taker(live=False)
    reader = SourceReader(str(path), SourceSettings(live=False, fps=2.5), taker.buffer)
    reader.start()
    wait_for(lambda: reader.state is SourceState.ENDED, "the clip never ended")
    taker.stop()
    assert [f.index for f in taker.frames] == [0, 4, 8, 12, 16]
    assert reader.stats.skipped == 15


class FakeCamera:
    """A container whose video packets arrive `interval_s` apart and count their decodings."""

    def __init__(self, packets: int, interval_s: float, intra_only: bool) -> None:
        self.packets, self.interval_s, self.decoded = packets, interval_s, 0
        codec = SimpleNamespace(codec=SimpleNamespace(intra_only=intra_only))
        self.streams = SimpleNamespace(video=[SimpleNamespace(thread_type=None, codec_context=codec)])

    def demux(self, stream):
        for i in range(self.packets):
            time.sleep(self.interval_s)
            yield SimpleNamespace(
                size=1000, pts=i, time_base=Fraction(1, 50), decode=lambda i=i: self.decode(i)
            )
        yield SimpleNamespace(size=0, pts=None, time_base=None, decode=lambda: [])  # the flush

    def decode(self, i: int) -> list[SimpleNamespace]:
        self.decoded += 1
        return [SimpleNamespace(pts=i, time_base=Fraction(1, 50), width=64, height=48)]


@pytest.mark.parametrize("intra_only", [True, False])
def test_frames_the_cap_does_not_want_are_decoded_only_when_later_frames_need_them(intra_only):
    camera = FakeCamera(packets=40, interval_s=0.02, intra_only=intra_only)  # 50 frames/s for 0.8 s
    taker = Taker(live=True)
    reader = SourceReader("http://camera/", SourceSettings(live=True, fps=10), taker.buffer)
    assert reader._read(camera) is True
    taker.stop()
    stats = reader.stats
    assert stats.decoded == 40 and stats.skipped == 40 - stats.handed
    assert 5 <= stats.handed <= 12  # about 10 frames/s of the 0.8 s
    assert camera.decoded == (stats.handed if intra_only else 40)


@pytest.mark.slow  # real time, real servers
def test_a_camera_that_goes_away_is_reconnected() -> None:
    camera = MjpegCamera(jpegs(sample_frames(4)), fps=20)
    taker = Taker(live=True)
    settings = SourceSettings(live=True, read_timeout_s=2.0, open_timeout_s=2.0, backoff_s=(0.2, 1.0))
    states: list[SourceState] = []
    reader = SourceReader(camera.url, settings, taker.buffer, states.append)
    with camera:
        reader.start()
        wait_for(lambda: len(taker.frames) >= 10, "no frames from the camera")
        assert reader.state is SourceState.RUNNING
        assert taker.frames[0].frame.width == 192
    wait_for(lambda: reader.state is SourceState.RECONNECTING, "the camera's end went unnoticed")
    seen = len(taker.frames)
    time.sleep(1.0)  # away for a while: reopenings fail
    with camera:
        wait_for(lambda: len(taker.frames) >= seen + 10, "no frames after the camera came back")
        assert reader.state is SourceState.RUNNING
        reader.stop()
    taker.stop()
    assert reader.stats.reconnects >= 1
    assert "the source" in (reader.stats.error or "")
    running, reconnecting = SourceState.RUNNING, SourceState.RECONNECTING
    assert [s for i, s in enumerate(states) if i == 0 or s is not states[i - 1]] == [
        running, reconnecting, running, SourceState.STOPPED
    ]  # fmt: skip
    assert reader.state is SourceState.STOPPED


def test_a_live_source_keeps_only_the_newest_frame() -> None:
    camera = MjpegCamera(jpegs(sample_frames(4)), fps=30)
    taker = Taker(live=True, delay_s=0.2)  # 5 frames/s taken from a 30 fps camera
    reader = SourceReader(camera.url, SourceSettings(live=True), taker.buffer)
    with camera:
        reader.start()
        wait_for(lambda: len(taker.frames) >= 6, "too few frames")
        reader.stop()
    taker.stop()
    stats = reader.stats
    assert stats.dropped["stale"] > 0
    assert stats.handed == len(taker.frames) + stats.dropped["stale"] + (1 if reader.buffer.take() else 0)
    assert all(b.index - a.index >= 3 for a, b in zip(taker.frames[1:], taker.frames[2:], strict=False))
    assert stats.source_fps == pytest.approx(30, rel=0.3)


def test_a_source_that_cannot_be_opened_fails_with_its_reason(tmp_path: Path) -> None:
    taker = Taker(live=True)
    settings = SourceSettings(live=True, open_attempts=2, backoff_s=(0.05, 0.05), open_timeout_s=1)
    reader = SourceReader("http://127.0.0.1:9/none.mjpg", settings, taker.buffer)
    reader.start()
    wait_for(lambda: reader.state is SourceState.FAILED, "never failed")
    taker.stop()
    assert reader.stats.error is not None and reader.stats.error.startswith("cannot open the source")


def test_a_refused_check_fails_the_source_before_it_opens(tmp_path: Path) -> None:
    from service.core.errors import SourceNotAllowed

    def refuse() -> None:
        raise SourceNotAllowed("not today")

    taker = Taker(live=True)
    settings = SourceSettings(live=True, open_attempts=1)
    reader = SourceReader("http://127.0.0.1:9/x", settings, taker.buffer, check=refuse)
    reader.start()
    wait_for(lambda: reader.state is SourceState.FAILED, "never failed")
    taker.stop()
    assert reader.stats.error == "cannot open the source: not today"


@pytest.mark.slow  # real time, real servers
def test_an_rtsp_camera_that_reboots_is_reconnected() -> None:
    from bench.server import free_port
    from tests.support.rtsp import RtspCamera, available

    if (why := available()) is not None:
        pytest.skip(why)
    camera = RtspCamera(free_port())
    taker = Taker(live=True)
    settings = SourceSettings(live=True, read_timeout_s=2.0, open_timeout_s=3.0, backoff_s=(0.2, 1.0))
    reader = SourceReader(camera.url, settings, taker.buffer)
    with camera:
        reader.start()
        wait_for(lambda: len(taker.frames) >= 40, "no frames from the RTSP camera", timeout_s=30)
        assert reader.state is SourceState.RUNNING
        assert (taker.frames[0].frame.width, taker.frames[0].frame.height) == (320, 240)
        assert reader.stats.source_fps == pytest.approx(10, rel=0.2)  # its 10 frames/s, over the last 5 s
    wait_for(lambda: reader.state is SourceState.RECONNECTING, "the camera's loss went unnoticed")
    seen = len(taker.frames)
    with camera:  # back, on the same port
        wait_for(lambda: len(taker.frames) >= seen + 10, "no frames after the camera came back", timeout_s=30)
        assert reader.state is SourceState.RUNNING
        reader.stop()
    taker.stop()
    assert reader.stats.reconnects >= 1


@pytest.mark.slow
def test_an_hls_playlist_over_http_is_read(tmp_path: Path) -> None:
    """An HLS stream (a playlist and its MPEG-TS segments, written by FFmpeg's own HLS muxer) served
    over HTTP: every frame read in order."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import av

    frames = sample_frames(20)
    with av.open(str(tmp_path / "index.m3u8"), "w", format="hls", options={"hls_time": "1"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 192, 256, "yuv420p"
        stream.codec_context.gop_size = 10  # a keyframe a second: a segment a second
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert len(list(tmp_path.glob("*.ts"))) >= 2

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    taker = Taker(live=False)  # never dropped, to count every frame
    url = f"http://127.0.0.1:{server.server_address[1]}/index.m3u8"
    reader = SourceReader(url, SourceSettings(live=False), taker.buffer)
    try:
        reader.start()
        wait_for(lambda: reader.state is SourceState.ENDED, "the playlist never ended")
    finally:
        taker.stop()
        server.shutdown()
        server.server_close()
    assert [f.index for f in taker.frames] == list(range(20))
