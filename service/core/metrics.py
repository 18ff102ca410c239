"""Every Prometheus metric of the service, in one registry per app (tests build many apps).

What a model's batcher and detector record carries the labels `model` and `version` (several models
in one server: service.core.model_set); each loaded model records through its `ModelMetrics` (the
children for its labels), whose series go away when the model is closed. The rest is the server's.

The names are what the Grafana dashboard charts; docs/operations.md ("Metrics") documents each one. Stage
timings follow Triton's breakdown: queue wait, preprocess (decode + letterbox), inference
(backend call for a whole batch) and postprocess (threshold + NMS + box scaling).
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder

__all__ = ["Metrics", "ModelMetrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DROP_REASONS = ("abandoned", "expired", "shutdown")
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
MODEL = ["model", "version"]  # the labels of what a model records
VIDEO_FRAME_STATES = ("decoded", "processed", "skipped")
TILE_BUCKETS = (2, 4, 6, 9, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)


class Metrics:
    """The service's metrics, registered in their own `CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux; nothing elsewhere)
        ProcessCollector(registry=registry)
        self.requests = Counter(
            "yolor_requests",
            "HTTP requests by route template and status code",
            ["route", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "yolor_request_duration_seconds",
            "End-to-end HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "yolor_queue_wait_seconds",
            "Time an image waited in the batch queue",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.preprocess = Histogram(
            "yolor_preprocess_seconds",
            "Decode + letterbox time per image",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "yolor_inference_seconds",
            "Backend time per batch",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.postprocess = Histogram(
            "yolor_postprocess_seconds",
            "Threshold + NMS + box scaling time per image",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "yolor_batch_size", "Images per backend call", MODEL, buckets=BATCH_BUCKETS, registry=registry
        )
        self.tiles = Histogram(
            "yolor_tiles_per_image",
            "Windows a tiled image was sliced into (sliced inference; the whole-image pass not counted)",
            MODEL,
            buckets=TILE_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "yolor_queue_depth", "Images waiting in the batch queue", MODEL, registry=registry
        )
        self.inflight_batches = Gauge(
            "yolor_inflight_batches", "Batches being run by the backend", MODEL, registry=registry
        )
        self.images = Counter("yolor_images", "Images run through the model", MODEL, registry=registry)
        self.detections = Counter("yolor_detections", "Detections returned", MODEL, registry=registry)
        self.rejected = Counter(
            "yolor_rejected", "Requests refused, by reason (the error code)", ["reason"], registry=registry
        )
        self.inference_errors = Counter(
            "yolor_inference_errors", "Batches whose backend call failed", MODEL, registry=registry
        )
        self.dropped_images = Counter(
            "yolor_dropped_images",
            "Queued images dropped before inference, by reason: abandoned (the client disconnected, the "
            "request timed out or another of its images failed), expired (deadline passed while queued), "
            "shutdown",
            [*MODEL, "reason"],
            registry=registry,
        )
        self.video_requests = Counter(
            "yolor_video_requests",
            "POST /detect/video streams started (the clip opened)",
            MODEL,
            registry=registry,
        )
        self.video_frames = Counter(
            "yolor_video_frames",
            "Video frames by state: decoded (read from a clip), processed (detected), skipped (vid_stride)",
            [*MODEL, "state"],
            registry=registry,
        )
        self.video_decode = Histogram(
            "yolor_video_decode_seconds",
            "Decode + letterbox time per processed video frame (skipped frames' decoding included)",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.client_disconnects = Counter(
            "yolor_client_disconnects",
            "Detect requests whose client disconnected before the answer was ready",
            MODEL,
            registry=registry,
        )
        self.detect_duration = Histogram(
            "yolor_model_request_duration_seconds",
            "Requests the model answered (/detect and its variants, v2 infer), from the body read to "
            "the results",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inflight_batch_age = Gauge(
            "yolor_inflight_batch_age_seconds",
            "How long the batch now in the backend has been running (0: none)",
            registry=registry,
        )
        self.backend_stalled = Gauge(
            "yolor_backend_stalled",
            "1 while a batch has been in the backend longer than the watchdog limit (/readyz is 503)",
            registry=registry,
        )
        self.backend_stalls = Counter(
            "yolor_backend_stalls", "Times the watchdog found a batch stuck in the backend", registry=registry
        )
        self.ready = Gauge("yolor_ready", "1 once the backend is loaded and warmed up", registry=registry)
        self.model_info = Gauge(
            "yolor_model_info",
            "Each loaded model and version (value 1)",
            [*MODEL, "arch", "backend", "precision", "max_batch", "model_dir"],
            registry=registry,
        )
        self.reloads = Counter(
            "yolor_model_reloads",
            "Model reloads (POST /admin/reload, SIGHUP) by result: ok (switched) or failed (old model kept)",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)
        self.last_reload = Gauge(
            "yolor_model_last_reload_timestamp_seconds",
            "Unix time of the last successful reload (0: none since start)",
            registry=registry,
        )

    def for_model(self, name: str, version: int) -> ModelMetrics:
        return ModelMetrics(self, name, version)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics and their content type, in the format the scraper's `Accept` header asks for:
        OpenMetrics (which carries the latency histograms' exemplars: the trace of a sampled
        request, service.tracing) or Prometheus text (the default)."""
        encode, content_type = choose_encoder(accept or "")
        if not content_type.startswith("application/openmetrics-text"):
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        return encode(self.registry), content_type


class _Partly:
    """A labelled metric with the model's labels already given: `.labels(reason=...)` adds the rest."""

    def __init__(self, metric: Any, labels: dict[str, str]) -> None:
        self._metric, self._labels = metric, labels

    def labels(self, **more: str) -> Any:
        return self._metric.labels(**self._labels, **more)


class ModelMetrics:
    """What one loaded model (name, version) records: the children of the per-model metrics for its
    labels, under the same names as `Metrics`; `remove()` drops its series (the model was closed)."""

    def __init__(self, metrics: Metrics, name: str, version: int) -> None:
        self._metrics, self.registry = metrics, metrics.registry
        self.labels = {"model": name, "version": str(version)}
        self._described: tuple[str, ...] = ()  # yolor_model_info's other label values, once set
        self.queue_wait = self._child("queue_wait")
        self.preprocess = self._child("preprocess")
        self.inference = self._child("inference")
        self.postprocess = self._child("postprocess")
        self.batch_size = self._child("batch_size")
        self.tiles = self._child("tiles")
        self.queue_depth = self._child("queue_depth")
        self.inflight_batches = self._child("inflight_batches")
        self.images = self._child("images")
        self.detections = self._child("detections")
        self.inference_errors = self._child("inference_errors")
        self.video_requests = self._child("video_requests")
        self.video_decode = self._child("video_decode")
        self.client_disconnects = self._child("client_disconnects")
        self.detect_duration = self._child("detect_duration")
        self.dropped_images = _Partly(metrics.dropped_images, self.labels)
        self.video_frames = _Partly(metrics.video_frames, self.labels)
        for reason in DROP_REASONS:  # every series from the start, at 0
            self.dropped_images.labels(reason=reason)
        for state in VIDEO_FRAME_STATES:
            self.video_frames.labels(state=state)

    def _child(self, name: str) -> Any:
        return getattr(self._metrics, name).labels(**self.labels)

    def info(self, *, arch: str, backend: str, precision: str, max_batch: int, model_dir: str) -> None:
        """`yolor_model_info` for this model: what it is and how it runs."""
        self._described = (arch, backend, precision, str(max_batch), model_dir)
        self._metrics.model_info.labels(*self.labels.values(), *self._described).set(1)

    def remove_info(self) -> None:
        """Drop this model's `yolor_model_info` series (replaced: the new one sets its own)."""
        if self._described:
            with contextlib.suppress(KeyError):
                self._metrics.model_info.remove(*self.labels.values(), *self._described)
            self._described = ()

    def remove(self) -> None:
        """Drop every series of this model (closed: nothing records through it any more)."""
        m, ours = self._metrics, tuple(self.labels.values())
        series = [(getattr(m, name), ours) for name in _CHILDREN]
        series += [(m.dropped_images, (*ours, reason)) for reason in DROP_REASONS]
        series += [(m.video_frames, (*ours, state)) for state in VIDEO_FRAME_STATES]
        self.remove_info()
        for family, values in series:
            with contextlib.suppress(KeyError):  # never recorded
                family.remove(*values)


_CHILDREN = (
    "queue_wait",
    "preprocess",
    "inference",
    "postprocess",
    "batch_size",
    "tiles",
    "queue_depth",
    "inflight_batches",
    "images",
    "detections",
    "inference_errors",
    "video_requests",
    "video_decode",
    "client_disconnects",
    "detect_duration",
)
