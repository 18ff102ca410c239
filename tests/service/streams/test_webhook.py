"""Webhook delivery against a real HTTP receiver: signed bodies a receiver can verify, retries on
5xx with backoff, no retry on another 4xx, the host checked before every attempt, and a slow
receiver that never slows the stream (offers return at once; the oldest events give way), and an
HTTPS receiver whose certificate is checked."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.core.errors import SourceNotAllowed
from service.streams.spec import WebhookSpec
from service.streams.webhook import WebhookSender

SECRET = "a-secret-of-16-chars-or-more"


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answered in turn; then 200
        self.delay_s = 0.0
        self.gate = threading.Event()  # cleared: every request is held (up to a minute) until it is set
        self.gate.set()


@contextmanager
def receiver(tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, Receiver]]:
    """A receiver on 127.0.0.1; over HTTPS with `tls` (a server context)."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(state.delay_s)
            state.gate.wait(60)
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/hook", state
    finally:
        state.gate.set()
        server.shutdown()
        server.server_close()


def verify(headers: dict[str, str], body: bytes, secret: str = SECRET) -> bool:
    """What a receiver does (the docs' recipe)."""
    expected = hmac.new(secret.encode(), headers["x-yolor-timestamp"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(headers["x-yolor-signature"], "sha256=" + expected.hexdigest())


def event(i: int, kind: str = "line.cross") -> dict[str, object]:
    return {"type": kind, "stream": "s", "frame": i, "name": "door", "direction": "in"}


async def until(condition, timeout_s: float = 10.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_events_are_signed_in_order_and_filtered_by_kind() -> None:
    with receiver() as (url, state):
        spec = WebhookSpec(url=url, secret=SECRET, events=["line.cross"])
        sender = WebhookSender(spec, lambda host: None)
        sender.start()
        for i in range(5):
            sender.offer(event(i))
            sender.offer(event(i, "zone.enter"))  # not subscribed
        await until(lambda: sender.stats.sent == 5)
        await sender.stop()
    bodies = [json.loads(body) for _, body in state.received]
    assert [b["frame"] for b in bodies] == [0, 1, 2, 3, 4]
    assert all(verify(h, b) for h, b in state.received)
    assert not verify(state.received[0][0], state.received[0][1] + b" ")  # a changed body fails
    assert abs(int(state.received[0][0]["x-yolor-timestamp"]) - time.time()) < 5


@pytest.mark.anyio
async def test_a_5xx_is_retried_with_backoff_and_a_4xx_is_not() -> None:
    with receiver() as (url, state):
        state.statuses = [500, 503, 200, 400]
        sender = WebhookSender(WebhookSpec(url=url), lambda host: None, backoff_s=(0.1, 1.0))
        sender.start()
        sender.offer(event(0))
        await until(lambda: sender.stats.sent == 1)
        sender.offer(event(1))  # answered 400: given up at once
        await until(lambda: sender.stats.failed == 1)
        await sender.stop()
    assert [json.loads(b)["frame"] for _, b in state.received] == [0, 0, 0, 1]
    assert sender.stats.last_error == "HTTP 400"
    assert "x-yolor-signature" not in state.received[0][0]  # no secret, no signature


@pytest.mark.anyio
async def test_a_receiver_that_is_down_is_given_up_on_after_the_attempts() -> None:
    sender = WebhookSender(
        WebhookSpec(url="http://127.0.0.1:9/hook"), lambda host: None, attempts=3, backoff_s=(0.05, 0.05)
    )
    sender.start()
    sender.offer(event(0))
    await until(lambda: sender.stats.failed == 1)
    await sender.stop()
    assert "ConnectError" in (sender.stats.last_error or "")


@pytest.mark.anyio
async def test_the_host_is_checked_before_each_attempt() -> None:
    def refuse(host: str) -> None:
        raise SourceNotAllowed(f"{host} is not allowed")

    with receiver() as (url, state):
        sender = WebhookSender(WebhookSpec(url=url), refuse)
        sender.start()
        sender.offer(event(0))
        await until(lambda: sender.stats.failed == 1)
        await sender.stop()
    assert state.received == [] and sender.stats.last_error == "127.0.0.1 is not allowed"


@pytest.mark.anyio
async def test_a_slow_receiver_never_blocks_the_offers() -> None:
    with receiver() as (url, state):
        state.delay_s = 0.3
        sender = WebhookSender(WebhookSpec(url=url), lambda host: None, queue=4)
        sender.start()
        started = time.perf_counter()
        for i in range(100):
            sender.offer(event(i))
        offered_s = time.perf_counter() - started
        await until(lambda: sender.stats.sent >= 3)
        await sender.stop()
    assert offered_s < 0.05  # 100 offers while one POST takes 0.3 s
    assert sender.stats.dropped == 96  # the oldest gave way to the newest (no await between the offers)
    # the first three only: stop() may cut a fourth POST short, and its body then arrives empty
    assert [json.loads(b)["frame"] for _, b in state.received[:3]] == [96, 97, 98]


def _certificates(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A private CA (its certificate's path) and a server context with a certificate it signed for
    127.0.0.1, made by the openssl tool."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return directory / "ca.pem", context


@pytest.mark.anyio
async def test_an_https_receiver_is_trusted_through_ssl_cert_file_and_refused_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver with a certificate from a private CA: refused (the certificate is checked), then
    delivered to once SSL_CERT_FILE names the CA, signed as over HTTP."""
    ca, context = _certificates(tmp_path)
    with receiver(context) as (url, state):
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        refused = WebhookSender(WebhookSpec(url=url, secret=SECRET), lambda host: None, attempts=1)
        refused.start()
        refused.offer(event(0))
        await until(lambda: refused.stats.failed == 1)
        await refused.stop()
        assert state.received == [] and "CERTIFICATE_VERIFY_FAILED" in (refused.stats.last_error or "")
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        trusting = WebhookSender(WebhookSpec(url=url, secret=SECRET), lambda host: None, attempts=1)
        trusting.start()
        trusting.offer(event(1))
        await until(lambda: trusting.stats.sent == 1)
        await trusting.stop()
    assert [json.loads(b)["frame"] for _, b in state.received] == [1]
    assert verify(*state.received[0])
