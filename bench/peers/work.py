"""The work a peer server does per image, the same as `yolor serve` does it: decode and letterbox
(`service.core.preprocess`), one ONNX Runtime call per batch on the manifest's FP32 ONNX, the
head's candidates above `conf`, NMS and boxes back in image pixels (`service.processing`), and
the detections as `/detect` writes them (`service.core.results.detections_json`).

It runs inside a peer's own venv (numpy, OpenCV, pydantic and onnxruntime beside the peer; the
repository on `sys.path`): everything it imports is torch-free and framework-free. What differs
between the servers is the serving around it (HTTP, batching, processes, threads), which is what
`yolor bench peers` compares.

The session is the one a user writes: `onnxruntime.InferenceSession(path)` on the CPU provider
with the intra-op thread count set, everything else at ONNX Runtime's defaults.

`standin_ms` replaces inference with an accelerator stand-in: each batch sleeps that long (the GIL
released, as a GPU call releases it) and answers no detections, as `bench.standin` does for ours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.options import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET
from service.core.preprocess import ImageInput, Preprocessor
from service.core.results import detections_json
from service.manifest import load_manifest
from service.processing import Detections, head_layout, scale_boxes, select_detections

MAX_IMAGE_PIXELS = 40_000_000  # `yolor serve`'s default YOLOR_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class PeerConfig:
    """What every peer app reads from its environment (`bench.peers.launch` sets it)."""

    model_dir: Path
    port: int
    workers: int  # processes / replicas the peer scales to
    threads: int  # ONNX Runtime intra-op threads per worker
    max_batch: int
    max_delay_ms: float
    standin_ms: float  # > 0: inference is this sleep per batch (an accelerator stand-in)

    @classmethod
    def from_env(cls) -> PeerConfig:
        env = os.environ
        return cls(
            model_dir=Path(env["PEER_MODEL_DIR"]),
            port=int(env["PEER_PORT"]),
            workers=int(env.get("PEER_WORKERS", "2")),
            threads=int(env.get("PEER_THREADS", "1")),
            max_batch=int(env.get("PEER_MAX_BATCH", "8")),
            max_delay_ms=float(env.get("PEER_MAX_DELAY_MS", "2")),
            standin_ms=float(env.get("PEER_STANDIN_MS", "0")),
        )


class Work:
    """One worker's model: `preprocess` each image, `infer` a batch, `detections` per image."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.manifest = load_manifest(config.model_dir)
        self._pre = Preprocessor(self.manifest, max_pixels=MAX_IMAGE_PIXELS)
        self._head = head_layout(self.manifest.head)
        self._output_shape = tuple(d or 1 for d in self.manifest.image_output_shape)
        self._session: Any = None
        if config.standin_ms <= 0:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = config.threads
            options.inter_op_num_threads = 1
            path = config.model_dir / self.manifest.artifacts["onnx"].file
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._input_name = self._session.get_inputs()[0].name

    def preprocess(self, jpeg: bytes) -> ImageInput:
        """Decode + letterbox, as an untiled `/detect` request does."""
        return self._pre.whole(jpeg)

    def infer(self, inputs: Sequence[ImageInput]) -> np.ndarray:
        """One batch: (N, *output) float32."""
        if self._session is None:
            time.sleep(self.config.standin_ms / 1000)
            return np.zeros((len(inputs), *self._output_shape), np.float32)
        batch = np.stack([i.tensor for i in inputs])
        return np.asarray(self._session.run(None, {self._input_name: batch})[0])

    def detections(self, output: np.ndarray, image: ImageInput) -> list[dict[str, Any]]:
        """One image's output row -> `/detect`'s `detections` at the default parameters."""
        boxes, scores, class_ids = self._head.candidates(output, DEFAULT_CONF)
        kept = select_detections(
            boxes, scores, class_ids, conf=DEFAULT_CONF, iou=DEFAULT_IOU, max_det=DEFAULT_MAX_DET
        )
        found = Detections(scale_boxes(kept.boxes, image.lb), kept.scores, kept.class_ids)
        return detections_json(found, self.manifest.class_names)

    def answer(self, output: np.ndarray, image: ImageInput) -> dict[str, Any]:
        """The JSON body a peer answers: `/detect`'s fields that the comparison checks."""
        return {"width": image.width, "height": image.height, "detections": self.detections(output, image)}

    def detect(self, jpegs: Sequence[bytes]) -> list[dict[str, Any]]:
        """Preprocess, infer and answer a whole batch in one call (the peers whose batch handler
        receives raw uploads)."""
        inputs = [self.preprocess(j) for j in jpegs]
        outputs = self.infer(inputs)
        return [self.answer(o, i) for o, i in zip(outputs, inputs, strict=True)]
