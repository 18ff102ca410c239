"""`python -m service.healthcheck` (the image's HEALTHCHECK) against a local server."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from service.healthcheck import check, main

pytestmark = pytest.mark.unit


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture()
def port():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_ok_only_on_200(port, monkeypatch):
    assert check("/healthz", port) and not check("/readyz", port)
    monkeypatch.setenv("YOLOR_PORT", str(port))
    assert main([]) == 0 and main(["/readyz"]) == 1


def test_nothing_listening_is_unhealthy():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not check("/healthz", closed, timeout_s=1)
