"""A stream's events POSTed to its webhook, one at a time and in order, from a task of their own:
detection only ever appends to a bounded queue (a receiver that cannot keep up loses the oldest
events, counted), never waits for the receiver.

Each body is the event's JSON; it is signed when the webhook has a secret:
`X-Yolor-Timestamp: <unix seconds>` and `X-Yolor-Signature: sha256=<hex>`, the HMAC-SHA256 of
`<timestamp>.<body>` under the secret (a receiver recomputes it, compares in constant time, and
refuses old timestamps: replays). A connection error, a timeout, a 429 or a 5xx is retried with
backoff (0.5 s doubling, 5 attempts); another 4xx is not. Redirects are not followed, and the host
is checked against YOLOR_STREAM_ALLOWED_HOSTS before every attempt.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from service.core.errors import ServiceError
from service.streams.spec import WebhookSpec
from service.tracing import detach

log = logging.getLogger(__name__)

Message = dict[str, Any]


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Yolor-Signature` value of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass
class WebhookStats:
    sent: int = 0
    failed: int = 0  # given up on (attempts spent, or refused by the receiver)
    dropped: int = 0  # pushed out of the queue by newer events
    last_error: str | None = None


class WebhookSender:
    def __init__(
        self,
        spec: WebhookSpec,
        check_host: Callable[[str], None],
        *,
        queue: int = 256,
        attempts: int = 5,
        backoff_s: tuple[float, float] = (0.5, 8.0),
        timeout_s: float = 5.0,
    ) -> None:
        self.spec, self._check_host = spec, check_host
        self.kinds = frozenset(spec.events)
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self.stats = WebhookStats()
        self._queue: collections.deque[Message] = collections.deque(maxlen=queue)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def offer(self, message: Message) -> None:
        if message["type"] not in self.kinds:
            return
        if len(self._queue) == self._queue.maxlen:
            self.stats.dropped += 1
        self._queue.append(message)
        self._ready.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        import httpx

        detach()  # created by POST /streams: its deliveries are not that request's
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            while True:
                while not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                await self._deliver(client, self._queue.popleft())

    async def _deliver(self, client: Any, message: Message) -> None:
        import httpx

        body = json.dumps(message, separators=(",", ":")).encode()
        wait = self.backoff_s[0]
        host = urlsplit(self.spec.url).hostname or ""
        for attempt in range(1, self.attempts + 1):
            retry = True
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._check_host, host)
                timestamp = str(int(time.time()))
                headers = {"Content-Type": "application/json", "X-Yolor-Timestamp": timestamp}
                if self.spec.secret is not None:
                    headers["X-Yolor-Signature"] = signature(self.spec.secret, timestamp, body)
                response = await client.post(self.spec.url, content=body, headers=headers)
                if response.status_code < 300:
                    self.stats.sent += 1
                    return
                retry = response.status_code == 429 or response.status_code >= 500
                self.stats.last_error = f"HTTP {response.status_code}"
            except ServiceError as e:  # the host is no longer allowed
                self.stats.last_error, retry = str(e), False
            except httpx.HTTPError as e:
                self.stats.last_error = f"{type(e).__name__}: {e}"
            if not retry or attempt == self.attempts:
                break
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.backoff_s[1])
        self.stats.failed += 1
        log.warning("webhook to %s: gave up on a %s event: %s", host, message["type"], self.stats.last_error)
