"""One live source read by one thread: PyAV (FFmpeg) opens it, decodes its frames, and hands the
frames the stream wants (its fps cap) to a one-frame buffer; the source reopens itself with backoff
when it stops delivering. A camera's frame the cap does not want is not even decoded when its codec
codes every frame on its own (MJPEG); other codecs' frames depend on earlier ones: all are decoded.

- Buffer policies: a live source (a camera: RTSP, MJPEG, HLS) keeps only the newest frame, a frame
  replaced before it was taken counts as dropped (`stale`); a file played in real time is never
  dropped (the reader waits for the frame to be taken: back-pressure).
- States: starting (first open) -> running -> reconnecting (the source failed, stalled past the read
  timeout or ended while live; reopened with backoff: 0.5 s doubling to 30 s, reset by a frame) ->
  running ... A file ends (`ended`) at its end unless it loops. A source that cannot be opened at all
  `open_attempts` times in a row before it ever ran is `failed`, with the reason (a new stream: the
  client learns its source is wrong); one that has run, or with `open_attempts` 0 (a stream reopened
  at start-up, whose camera may be rebooting too), reconnects until it is stopped.
- FFmpeg's open and read timeouts are PyAV's (its interrupt callback), so a dead camera never blocks
  the thread; RTSP goes over TCP; only the protocols a source's scheme needs are allowed (an HLS
  playlist cannot point FFmpeg at a local file).

PyAV is imported when a source starts: the rest of the server runs without it.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from service.core.video import seconds

# FFmpeg protocols a source may use, by its URL's scheme (tls/crypto for the encrypted variants).
PROTOCOLS = {
    "rtsp": "rtsp,rtp,srtp,udp,tcp",
    "rtsps": "rtsp,rtsps,rtp,srtp,udp,tcp,tls",
    "http": "http,tcp,hls,crypto",
    "https": "http,https,tcp,tls,hls,crypto",
    "file": "file",
}


FPS_WINDOW_S = 5.0


class SourceState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SourceSettings:
    fps: float | None = None  # at most this many frames per second handed on (None: every frame)
    live: bool = True  # keep the newest frame; False: a file, paced in real time, never dropped
    loop: bool = False  # a file starts over at its end
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0  # no packet for this long: the source is reopened
    open_attempts: int = 3  # before it ever ran: failed after this many opens in a row failed (0: never)
    backoff_s: tuple[float, float] = (0.5, 30.0)  # first and longest wait between reopenings
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class SourceFrame:
    index: int  # frames decoded from this source so far (across reconnects), this one's number
    captured: float  # time.time() when it was decoded (the end-to-end latency starts here)
    pts_s: float | None
    frame: Any  # the decoded av.VideoFrame: converted to RGB by whoever takes it (service.core.video.upright)


@dataclass
class SourceStats:
    decoded: int = 0  # frames read from the source (decoded, unless skipped before decoding)
    handed: int = 0  # past the fps cap, into the buffer
    skipped: int = 0  # not wanted under the fps cap
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason: stale
    reconnects: int = 0
    last_frame_at: float | None = None  # time.monotonic()
    source_fps: float | None = None  # frames decoded per second over the last FPS_WINDOW_S
    error: str | None = None  # the last failure, kept after recovery until the next one


class FrameBuffer:
    """One frame between the reader thread and the stream's task. `put` never blocks for a live
    source (the frame replaces the one waiting: dropped), and waits for `take` for a file; `get`
    is awaited on the event loop."""

    def __init__(self, live: bool, on_ready: Callable[[], None]) -> None:
        self.live, self._on_ready = live, on_ready
        self._frame: SourceFrame | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, frame: SourceFrame) -> bool:
        """Whether a frame waiting was replaced (live only). Returns at once when closed."""
        with self._cond:
            if not self.live:
                self._cond.wait_for(lambda: self._frame is None or self._closed)
            replaced = self._frame is not None and not self._closed
            self._frame = frame
        self._on_ready()
        return replaced

    def take(self) -> SourceFrame | None:
        with self._cond:
            frame, self._frame = self._frame, None
            self._cond.notify_all()
        return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._on_ready()


class SourceReader:
    """The thread that reads `url` (an absolute file path for a file) into `buffer` until `stop`.
    `on_change` is called (from the thread) on every state change; `stats` and `state` are read by
    anyone (single writer)."""

    def __init__(
        self,
        url: str,
        settings: SourceSettings,
        buffer: FrameBuffer,
        on_change: Callable[[SourceState], None] = lambda _: None,
        *,
        check: Callable[[], None] = lambda: None,
        name: str = "yolor-source",
    ) -> None:
        """`check` runs before every opening (raising refuses it: the host's addresses may have changed)."""
        self.url, self.settings, self.buffer, self._on_change = url, settings, buffer, on_change
        self._check = check
        self.state = SourceState.STARTING
        self.stats = SourceStats()
        self._times: collections.deque[float] = collections.deque()  # the last frames' timestamps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading (the open or read in progress is interrupted within ~0.1 s)."""
        self._stop.set()
        self.buffer.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self._set(SourceState.STOPPED)

    def _set(self, state: SourceState) -> None:
        if self.state is not state and self.state is not SourceState.STOPPED:
            self.state = state
            self._on_change(state)

    def _run(self) -> None:
        failed_opens, wait = 0, self.settings.backoff_s[0]
        while not self._stop.is_set():
            try:
                container = self._open()
            except Exception as e:
                self.stats.error = f"cannot open the source: {_reason(e)}"
                failed_opens += 1
                attempts = self.settings.open_attempts
                if self.state is SourceState.STARTING and attempts and failed_opens >= attempts:
                    self._set(SourceState.FAILED)
                    return
            else:
                failed_opens = 0
                try:
                    ended = self._read(container)
                except Exception as e:
                    self.stats.error = f"the source stopped: {_reason(e)}"
                    ended = False
                finally:
                    container.close()
                if self.stats.last_frame_at is not None and self.state is SourceState.RUNNING:
                    wait = self.settings.backoff_s[0]  # it delivered: start the backoff over
                if ended and not (self.settings.live or self.settings.loop):
                    self._set(SourceState.ENDED)
                    self.buffer.close()
                    return
                if ended and not self.settings.live:
                    continue  # a looping file starts over at once
                if ended:
                    self.stats.error = "the source ended"
            if self._stop.is_set():
                return
            if self.state is not SourceState.STARTING:
                self._set(SourceState.RECONNECTING)
            self._stop.wait(wait)
            wait = min(wait * 2, self.settings.backoff_s[1])
            if self.state is SourceState.RECONNECTING:
                self.stats.reconnects += 1

    def _open(self) -> Any:
        import av

        self._check()
        scheme = urlsplit(self.url).scheme if "://" in self.url else "file"
        options = {"protocol_whitelist": PROTOCOLS[scheme]}
        if scheme.startswith("rtsp"):
            options["rtsp_transport"] = "tcp"
        if self.settings.live:  # probe a camera for 1 s, not FFmpeg's 5: a faster start, a smaller burst
            options["analyzeduration"] = "1000000"
        return av.open(
            self.url,
            options=options,
            timeout=(self.settings.open_timeout_s, self.settings.read_timeout_s),
        )

    def _read(self, container: Any) -> bool:
        """Frames until the source ends (True) or `stop` (False)."""
        stream = container.streams.video[0] if container.streams.video else None
        if stream is None:
            raise ValueError("the source has no video stream")
        stream.thread_type = "AUTO"
        live = self.settings.live
        cap = _Cap(self.settings.fps)
        # A camera whose every frame is coded on its own (MJPEG): a frame the cap does not want is
        # skipped before it is decoded, its packet's arrival being the cap's clock.
        by_packet = live and self.settings.fps is not None and bool(stream.codec_context.codec.intra_only)
        paced_from: tuple[float, float] | None = None  # (wall clock, pts) of a file's first frame
        for packet in container.demux(stream):
            if self._stop.is_set():
                return False
            if by_packet and packet.size:
                now = time.monotonic()
                if not cap.wanted(now):
                    self._count(now, seconds(packet.pts, packet.time_base))
                    self.stats.skipped += 1
                    continue
            for frame in packet.decode():
                if self._stop.is_set():
                    return False
                now = time.monotonic()
                pts_s = seconds(frame.pts, frame.time_base)
                if not live and pts_s is not None:  # real time: wait for the frame's moment
                    if paced_from is None:
                        paced_from = (now, pts_s)
                    delay = paced_from[0] + (pts_s - paced_from[1]) - now
                    if delay > 0 and self._stop.wait(delay):
                        return False
                    now = time.monotonic()
                if frame.width * frame.height > self.settings.max_pixels:
                    raise ValueError(f"frames of {frame.width}x{frame.height} pixels are over the limit")
                self._count(now, pts_s)
                self._set(SourceState.RUNNING)
                # The cap's clock: a file's own timestamps (it is paced by them), else the arrival time.
                if not by_packet and not cap.wanted(pts_s if not live and pts_s is not None else now):
                    self.stats.skipped += 1
                    continue
                captured = SourceFrame(self.stats.decoded - 1, time.time(), pts_s, frame)
                if self.buffer.put(captured):
                    self.stats.dropped["stale"] += 1
                self.stats.handed += 1
        return True

    def _count(self, now: float, pts_s: float | None) -> None:
        """One more frame decoded. The source's rate: the frames of its last FPS_WINDOW_S by their
        timestamps (by arrival when they have none), so that a burst (the frames FFmpeg reads while it
        probes a stream it opens, delivered at once) does not count as a faster source."""
        stats, times = self.stats, self._times
        clock = pts_s if pts_s is not None else now
        if times and clock < times[-1]:  # timestamps restarted (a reconnection): a new window
            times.clear()
        times.append(clock)
        while clock - times[0] > FPS_WINDOW_S:
            times.popleft()
        span = clock - times[0]
        stats.source_fps = (len(times) - 1) / span if len(times) >= 3 and span > 0 else stats.source_fps
        stats.decoded += 1
        stats.last_frame_at = now


class _Cap:
    """The fps cap: frames wanted on a grid of 1/fps from the first one; a source that fell behind
    by more than a period restarts the grid."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self.next_due: float | None = None

    def wanted(self, clock: float) -> bool:
        due = self.next_due
        if due is not None and clock < due - self.period * 1e-3:
            return False
        self.next_due = clock + self.period if due is None or clock - due > self.period else due + self.period
        return True


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
