"""The streams' Prometheus metrics, read from each stream's own counters when Prometheus scrapes (the
reader thread and the stream's task count nothing twice), labelled by stream id; a deleted stream's
series go with it. docs/operations.md ("Metrics") documents each one.

- `yolor_streams{state}`: streams by state;
- `yolor_stream_up{stream, name}`: 1 while running, 0 while starting, reconnecting, ended or failed;
- `yolor_stream_state{stream, state}`: 1 for the stream's state, 0 for the others (what alerts use);
- `yolor_stream_frames_total{stream, stage}`: decoded, skipped (the fps cap), processed;
- `yolor_stream_dropped_frames_total{stream, reason}`: stale (a live source's newer frame took its
  place), overloaded, timeout, failed, not_ready;
- `yolor_stream_reconnects_total`, `yolor_stream_last_frame_age_seconds`, `yolor_stream_source_fps`,
  `yolor_stream_processed_fps`;
- `yolor_stream_line_crossings_total{stream, line, direction}`, `yolor_stream_zone_entries_total`,
  `yolor_stream_zone_exits_total`, `yolor_stream_zone_occupancy{stream, zone}`;
- `yolor_stream_latency_seconds{stream}` (histogram, observed per processed frame): capture to
  publication.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from service.streams.reader import SourceState
from service.streams.stream import FRAME_DROP_REASONS

if TYPE_CHECKING:
    from service.streams.stream import Stream

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


class StreamCollector(Collector):
    def __init__(self, streams: Callable[[], Iterable[Stream]]) -> None:
        self._streams = streams

    def collect(self) -> Iterator[Metric]:
        streams = list(self._streams())
        by_state = GaugeMetricFamily("yolor_streams", "Streams by state", labels=["state"])
        for state in SourceState:
            by_state.add_metric([state.value], sum(s.state is state for s in streams))
        up = GaugeMetricFamily(
            "yolor_stream_up", "1 while the stream's source delivers", labels=["stream", "name"]
        )
        states = GaugeMetricFamily(
            "yolor_stream_state", "1 for the stream's state", labels=["stream", "state"]
        )
        frames = CounterMetricFamily(
            "yolor_stream_frames",
            "Frames by stage: decoded, skipped (fps cap), processed",
            labels=["stream", "stage"],
        )
        dropped = CounterMetricFamily(
            "yolor_stream_dropped_frames",
            "Frames wanted but not processed, by reason",
            labels=["stream", "reason"],
        )
        reconnects = CounterMetricFamily(
            "yolor_stream_reconnects", "Reopenings of the source", labels=["stream"]
        )
        age = GaugeMetricFamily(
            "yolor_stream_last_frame_age_seconds", "Seconds since the source's last frame", labels=["stream"]
        )
        source_fps = GaugeMetricFamily(
            "yolor_stream_source_fps", "Frames/s the source delivers", labels=["stream"]
        )
        processed_fps = GaugeMetricFamily(
            "yolor_stream_processed_fps", "Frames/s processed (last 10 s)", labels=["stream"]
        )
        crossings = CounterMetricFamily(
            "yolor_stream_line_crossings", "Line crossings", labels=["stream", "line", "direction"]
        )
        entries = CounterMetricFamily("yolor_stream_zone_entries", "Zone entries", labels=["stream", "zone"])
        exits = CounterMetricFamily("yolor_stream_zone_exits", "Zone exits", labels=["stream", "zone"])
        occupancy = GaugeMetricFamily(
            "yolor_stream_zone_occupancy", "Tracks in the zone now", labels=["stream", "zone"]
        )
        for stream in streams:
            s, stats = stream.id, stream.reader.stats
            up.add_metric([s, stream.spec.name or ""], 1.0 if stream.state is SourceState.RUNNING else 0.0)
            for state in SourceState:
                states.add_metric([s, state.value], 1.0 if stream.state is state else 0.0)
            frames.add_metric([s, "decoded"], stats.decoded)
            frames.add_metric([s, "skipped"], stats.skipped)
            frames.add_metric([s, "processed"], stream.processed)
            drops = stream.drops()
            for reason in FRAME_DROP_REASONS:
                dropped.add_metric([s, reason], drops[reason])
            reconnects.add_metric([s], stats.reconnects)
            if (frame_age := stream.last_frame_age()) is not None:
                age.add_metric([s], frame_age)
            if stats.source_fps is not None:
                source_fps.add_metric([s], stats.source_fps)
            processed_fps.add_metric([s], stream.processed_fps())
            counter = stream.counter
            if counter is None:
                continue
            for line, line_count in counter.line_counts.items():
                for direction in ("in", "out"):
                    crossings.add_metric([s, line, direction], line_count.crossed[direction])
            for zone, zone_count in counter.zone_counts.items():
                entries.add_metric([s, zone], zone_count.entered)
                exits.add_metric([s, zone], zone_count.exited)
                occupancy.add_metric([s, zone], len(zone_count.inside))
        yield from (by_state, up, states, frames, dropped, reconnects, age, source_fps, processed_fps)
        yield from (crossings, entries, exits, occupancy)


class StreamMetrics:
    """The collector, registered once per app, and the latency histogram the streams observe."""

    def __init__(self, registry: CollectorRegistry, streams: Callable[[], Iterable[Stream]]) -> None:
        registry.register(StreamCollector(streams))
        self.latency = Histogram(
            "yolor_stream_latency_seconds",
            "Capture (decoded at the source's reader) to the frame's results published",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def forget(self, stream_id: str) -> None:
        """A deleted stream's histogram series."""
        with contextlib.suppress(KeyError):  # it never processed a frame
            self.latency.remove(stream_id)
