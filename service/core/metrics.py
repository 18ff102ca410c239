"""Every Prometheus metric of the service, in one registry per app (tests build many apps).

The names are what the Grafana dashboard charts; docs/operations.md ("Metrics") documents each one. Stage
timings follow Triton's breakdown: queue wait, preprocess (decode + letterbox), inference
(backend call for a whole batch) and postprocess (threshold + NMS + box scaling).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DROP_REASONS = ("abandoned", "expired", "shutdown")
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
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
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.preprocess = Histogram(
            "yolor_preprocess_seconds",
            "Decode + letterbox time per image",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "yolor_inference_seconds", "Backend time per batch", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.postprocess = Histogram(
            "yolor_postprocess_seconds",
            "Threshold + NMS + box scaling time per image",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "yolor_batch_size", "Images per backend call", buckets=BATCH_BUCKETS, registry=registry
        )
        self.tiles = Histogram(
            "yolor_tiles_per_image",
            "Windows a tiled image was sliced into (sliced inference; the whole-image pass not counted)",
            buckets=TILE_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge("yolor_queue_depth", "Images waiting in the batch queue", registry=registry)
        self.inflight_batches = Gauge(
            "yolor_inflight_batches", "Batches being run by the backend", registry=registry
        )
        self.images = Counter("yolor_images", "Images run through the model", registry=registry)
        self.detections = Counter("yolor_detections", "Detections returned", registry=registry)
        self.rejected = Counter(
            "yolor_rejected", "Requests refused, by reason (the error code)", ["reason"], registry=registry
        )
        self.inference_errors = Counter(
            "yolor_inference_errors", "Batches whose backend call failed", registry=registry
        )
        self.dropped_images = Counter(
            "yolor_dropped_images",
            "Queued images dropped before inference, by reason: abandoned (the client disconnected, the "
            "request timed out or another of its images failed), expired (deadline passed while queued), "
            "shutdown",
            ["reason"],
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.dropped_images.labels(reason=reason)
        self.video_requests = Counter(
            "yolor_video_requests", "POST /detect/video streams started (the clip opened)", registry=registry
        )
        self.video_frames = Counter(
            "yolor_video_frames",
            "Video frames by state: decoded (read from a clip), processed (detected), skipped (vid_stride)",
            ["state"],
            registry=registry,
        )
        for state in ("decoded", "processed", "skipped"):
            self.video_frames.labels(state=state)
        self.video_decode = Histogram(
            "yolor_video_decode_seconds",
            "Decode + letterbox time per processed video frame (skipped frames' decoding included)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.client_disconnects = Counter(
            "yolor_client_disconnects",
            "Detect requests whose client disconnected before the answer was ready",
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
            "The served model (value 1)",
            ["arch", "backend", "precision", "max_batch", "model_dir"],
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

    def set_model(self, *, arch: str, backend: str, precision: str, max_batch: int, model_dir: str) -> None:
        self.model_info.clear()
        labels = {"arch": arch, "backend": backend, "precision": precision, "max_batch": str(max_batch)}
        self.model_info.labels(**labels, model_dir=model_dir).set(1)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
