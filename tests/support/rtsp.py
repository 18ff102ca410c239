"""A real RTSP server for the stream tests: GStreamer's (gst-rtsp-server, Debian's
gir1.2-gst-rtsp-server-1.0 with python3-gi, run by the system Python in a process of its own, so
that it can be killed and started again like a camera that reboots). It serves a live H.264 test
pattern at `rtsp://127.0.0.1:<port>/live`.

`make system-tools` installs the Debian packages; without them the tests that need it skip.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"

SERVER = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
if server.attach(None) == 0:
    sys.exit("could not listen")
print("ready", flush=True)
GLib.MainLoop().run()
"""


def available() -> str | None:
    """Why the RTSP server cannot run here (None: it can)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON}"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
         "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return "GStreamer's RTSP server, x264enc or rtph264pay is missing (make system-tools)"
    return None


class RtspCamera:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/live"
        self._process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 20.0) -> None:
        assert shutil.which(SYSTEM_PYTHON) or Path(SYSTEM_PYTHON).exists()
        self._process = process = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", SERVER, str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        give_up = time.monotonic() + timeout_s
        line = process.stdout.readline()
        if line.strip() != "ready" or time.monotonic() > give_up:
            self.stop()
            raise RuntimeError(f"the RTSP server did not start: {line}{process.stdout.read()}")

    def stop(self) -> None:
        """Killed, as a camera that loses power: no RTSP TEARDOWN, the connection just drops."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()

    def __enter__(self) -> RtspCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
