"""The server's streams: created, listed, deleted, kept in the store, reopened at start-up, closed at
shutdown. Transport-free: the HTTP routes call it, as would any other adapter.

A stream is held by the process that opened it, so streams need one server process
(`YOLOR_WORKERS=1`; several hosts: one stream list per replica, see the README).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from service.core.errors import NotFound, NotReady, ServiceError, StreamsUnavailable, TooManyStreams
from service.core.options import DetectParams
from service.core.state import ServiceState
from service.settings import Settings
from service.streams.metrics import StreamMetrics
from service.streams.reader import SourceSettings
from service.streams.sources import Source, SourcePolicy
from service.streams.spec import StreamSpec
from service.streams.store import StreamStore
from service.streams.stream import Stream
from service.streams.webhook import WebhookSender

log = logging.getLogger(__name__)


class StreamManager:
    def __init__(
        self, settings: Settings, state: ServiceState, *, policy: SourcePolicy | None = None
    ) -> None:
        self.settings, self.state = settings, state
        self.policy = policy or SourcePolicy(settings.stream_allowed_hosts, settings.stream_root)
        self.store = StreamStore(settings.state_dir) if settings.state_dir is not None else None
        self.streams: dict[str, Stream] = {}
        self.metrics = StreamMetrics(state.metrics.registry, lambda: list(self.streams.values()))
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Reopen the streams kept in the store: retried until their sources open (never failed); one
        whose file is no longer allowed is dropped, logged."""
        if self.store is None or self.settings.workers > 1:
            return
        for stream_id, spec in self.store.load().items():
            try:
                await self._open(stream_id, spec, restored=True)
            except ServiceError as e:
                log.error("streams: not reopening %s (%s): %s", stream_id, spec.source, e)
        self._save()

    def end_listeners(self) -> None:
        """Shutdown begins: every listener (SSE, WebSocket, MJPEG) gets what it has, then its end; the
        streams run on until `close`."""
        for stream in self.streams.values():
            stream.end_listeners()

    async def close(self) -> None:
        """Stop every stream (kept in the store: they reopen at the next start)."""
        streams, self.streams = list(self.streams.values()), {}
        await asyncio.gather(*(s.stop() for s in streams), return_exceptions=True)

    async def create(self, spec: StreamSpec) -> Stream:
        if self.settings.workers > 1:
            raise StreamsUnavailable(
                f"streams need one server process; with YOLOR_WORKERS={self.settings.workers} each would "
                "open it: run more replicas instead, each with its own streams"
            )
        async with self._lock:
            if len(self.streams) >= self.settings.max_streams:
                raise TooManyStreams(
                    f"{len(self.streams)} streams are open, as many as YOLOR_MAX_STREAMS allows: delete one"
                )
            self._check_classes(spec)
            stream = await self._open(uuid.uuid4().hex, spec)
            self._save()
        return stream

    def get(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise NotFound(f"no stream {stream_id!r}")
        return stream

    async def delete(self, stream_id: str) -> None:
        async with self._lock:
            stream = self.get(stream_id)
            del self.streams[stream_id]
            self._save()
        await stream.stop()
        self.metrics.forget(stream_id)

    def _check_classes(self, spec: StreamSpec) -> None:
        """422 now for a class the stream's model lacks, 404 when that model is not loaded (once the
        server is ready; else at the first frame)."""
        try:
            names = self.state.current(spec.model, spec.version).detector.manifest.class_names
        except NotReady:
            return
        DetectParams.of(spec.options(), names)
        spec.counting(names)

    async def _open(self, stream_id: str, spec: StreamSpec, *, restored: bool = False) -> Stream:
        """`restored` (kept from the last run): its source is retried until it opens, never failed."""
        loop = asyncio.get_running_loop()
        source = await loop.run_in_executor(  # resolves the host (not yet for a restored stream)
            None, functools.partial(self.policy.check, spec.source, resolve=not restored)
        )
        if spec.webhook is not None and not restored:  # (checked again before each delivery)
            await loop.run_in_executor(
                None, self.policy.check_host, urlsplit(spec.webhook.url).hostname or ""
            )
        settings = SourceSettings(
            fps=spec.fps,
            live=source.live,
            loop=spec.loop and not source.live,
            open_timeout_s=self.settings.stream_open_timeout_s,
            read_timeout_s=self.settings.stream_read_timeout_s,
            max_pixels=self.settings.max_image_pixels,
            open_attempts=0 if restored else SourceSettings.open_attempts,
        )
        webhook = WebhookSender(spec.webhook, self.policy.check_host) if spec.webhook is not None else None
        latency = self.metrics.latency.labels(stream_id)
        check = self._host_check(source)
        stream = Stream(
            stream_id, spec, source, self.state, settings, check=check, webhook=webhook, latency=latency
        )
        stream.start()
        self.streams[stream_id] = stream
        return stream

    def _host_check(self, source: Source) -> Callable[[], None]:
        host = source.host
        if host is None:
            return lambda: None
        return lambda: self.policy.check_host(host)

    def _save(self) -> None:
        if self.store is not None:
            self.store.save({i: s.spec for i, s in self.streams.items()})
