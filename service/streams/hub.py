"""A stream's results fanned out to whoever listens (SSE, WebSocket, webhook): each listener has its
own bounded queue, and a listener that falls behind loses its oldest messages (counted, and told
in the next message it gets), never the stream's detection, which only ever appends.

Runs on the event loop: `publish` is called from the stream's task, `Listener.get` awaited by each
adapter's task.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

Message = dict[str, Any]


class Listener:
    def __init__(self, size: int, kinds: frozenset[str] | None) -> None:
        self.kinds = kinds  # the message types it wants (None: all)
        self.lost = 0  # messages dropped for it so far
        self._queue: collections.deque[Message] = collections.deque(maxlen=size)
        self._ready = asyncio.Event()
        self.closed = False

    def offer(self, message: Message) -> None:
        if self.kinds is not None and message["type"] not in self.kinds:
            return
        if len(self._queue) == self._queue.maxlen:
            self.lost += 1
        self._queue.append(message)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> Message | None:
        """The oldest message kept (with `lost`: how many were dropped before it, when any); None
        once the hub is closed and every message kept was taken."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        message = self._queue.popleft()
        if self.lost:
            message = {**message, "lost": self.lost}
            self.lost = 0
        return message


class Hub:
    def __init__(self, listener_queue: int = 64) -> None:
        self.listener_queue = listener_queue
        self._listeners: set[Listener] = set()
        self.closed = False

    @contextmanager
    def listen(self, kinds: frozenset[str] | None = None) -> Iterator[Listener]:
        """A listener for the `with` block (closed at once when the hub is already closed)."""
        listener = Listener(self.listener_queue, kinds)
        if self.closed:
            listener.close()
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def publish(self, message: Message) -> None:
        for listener in self._listeners:
            listener.offer(message)

    def close(self) -> None:
        """The stream ended: every listener gets what it has left, then None."""
        self.closed = True
        for listener in self._listeners:
            listener.close()
