"""HTTP MJPEG cameras for the stream tests and benchmarks: `multipart/x-mixed-replace` JPEG frames at a
fixed rate, as IP cameras serve them, from a thread; stopped and started again on the same port to
play a camera that goes away and comes back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "camframe"


def jpegs(frames: Sequence[np.ndarray]) -> list[bytes]:
    """RGB frames as JPEG files."""
    out = []
    for image in frames:
        ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(data.tobytes())
    return out


class MjpegCamera:
    """`url` serves `frames` (JPEG bytes) in a loop at `fps` to every client, while running."""

    def __init__(self, frames: Sequence[bytes], fps: float = 10.0) -> None:
        self.frames, self.fps = list(frames), fps
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/video.mjpg"
        self.served = 0  # frames sent, all clients together
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
                self.end_headers()
                period, index = 1.0 / camera.fps, 0
                next_at = time.monotonic()
                try:
                    while camera._server is server:
                        jpeg = camera.frames[index % len(camera.frames)]
                        head = (
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        )
                        self.wfile.write(head.encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                        camera.served += 1
                        index += 1
                        next_at += period
                        time.sleep(max(0.0, next_at - time.monotonic()))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="mjpeg-camera", daemon=True).start()

    def stop(self) -> None:
        """The camera goes away: the listening socket closes and every client's stream ends."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> MjpegCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
