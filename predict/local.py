"""The model in this process, served as `yolor serve` serves it: the same settings (`YOLOR_*`), the
same loader (`service.core.model.load_model`: backend checked against the manifest, batcher,
detector), images through `Detector.detect` and clips through `service.core.video_detection`, and
the detections encoded as the HTTP answers encode them (`service.core.results`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from predict.engine import Filters, ItemError, Record, StartError
from service.backends.factory import BackendFactory, create_backend
from service.core.errors import InvalidParameter, ServiceError
from service.core.metrics import Metrics
from service.core.model import LoadedModel, load_model
from service.core.options import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET, DetectOptions, DetectParams
from service.core.results import detections_json, frame_json, video_summary
from service.core.video import VideoClip, VideoLimits
from service.core.video_detection import TrackBook, detect_frames
from service.settings import Settings
from service.tracking import ByteTracker, TrackerSettings


class LocalEngine:
    """Built by `start`; `close` when done (finishes what was queued, releases the backend)."""

    def __init__(
        self, model: LoadedModel, pool: ThreadPoolExecutor, settings: Settings, params: DetectParams
    ):
        self.model, self.pool, self.settings, self.params = model, pool, settings, params
        self.class_names = list(model.manifest.class_names)
        backend = model.backend
        self.model_version = f"{model.manifest.arch} {backend.name} {backend.precision}"
        self.max_batch = model.max_batch
        self.limits = VideoLimits.of(settings)

    @classmethod
    async def start(
        cls, settings: Settings, filters: Filters, *, backend_factory: BackendFactory | None = None
    ) -> LocalEngine:
        """Load `settings.model_dir` and warm it up as the server does at start-up. Raises
        ManifestError, BackendError, StartError (a class the model does not have)."""
        options = DetectOptions(
            conf=DEFAULT_CONF if filters.conf is None else filters.conf,
            iou=DEFAULT_IOU if filters.iou is None else filters.iou,
            max_det=DEFAULT_MAX_DET if filters.max_det is None else filters.max_det,
            classes=filters.classes,
        )
        pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="yolor-pre")
        try:
            model = await load_model(
                settings, settings.model_dir, backend_factory or create_backend, metrics=Metrics(), pool=pool
            )
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        try:
            params = DetectParams.of(options, model.manifest.class_names)
            await model.warm_up(decode_threads=settings.preprocess_workers)
        except InvalidParameter as e:
            await model.close(settings.request_timeout_s)
            pool.shutdown(wait=False, cancel_futures=True)
            raise StartError(e.message) from None
        except BaseException:
            await model.close(settings.request_timeout_s)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        return cls(model, pool, settings, params)

    async def image(self, data: bytes) -> Record:
        with self.model.use() as detector:
            try:
                outcome = await detector.detect([data], self.params, started=time.monotonic())
            except ServiceError as e:
                raise ItemError(e.code, e.message) from None
        image = outcome.images[0]
        detections = detections_json(image.detections, self.class_names)
        return {"width": image.width, "height": image.height, "detections": detections}

    async def video(self, path: Path, stride: int, track: bool = False) -> AsyncIterator[Record]:
        loop = asyncio.get_running_loop()
        with self.model.use() as detector:
            try:
                file = await asyncio.to_thread(path.open, "rb")
            except OSError as e:
                raise ItemError("unreadable", str(e)) from None
            try:  # the clip owns the file from here (closes it, also when it fails to open)
                clip = await loop.run_in_executor(detector.pool, VideoClip, file, self.limits)
            except ServiceError as e:
                raise ItemError(e.code, e.message) from None
            started, processed = time.monotonic(), 0
            tracker, book = None, None
            if track:  # the server's defaults (POST /detect/video?track=true), at this clip's rate
                tracker, book = ByteTracker(TrackerSettings(frame_rate=clip.info.rate(stride))), TrackBook()
            frames = detect_frames(detector, clip, self.params, stride=stride, tracker=tracker, book=book)
            try:
                async for frame in frames:
                    processed += 1
                    yield frame_json(frame, self.class_names)
            except ServiceError as e:
                raise ItemError(e.code, e.message) from None
            finally:
                await frames.aclose()  # closes the clip once no decoding of it runs
            summary = video_summary(clip, processed, time.monotonic() - started, self.class_names, book)
            yield {"summary": summary}

    async def close(self) -> None:
        try:
            await self.model.retire(self.settings.request_timeout_s)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
