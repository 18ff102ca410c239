"""`yolor eval`: COCO mAP of a checkpoint (PyTorch) or of an exported model folder (ONNX Runtime, i.e.
what the service runs) on a dataset split, with the serving pre- and post-processing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.processing import head_layout, letterbox, scale_boxes, select_detections, to_input_tensor
from train.data.datasets import load_dataset
from train.evaluate import coco_map, ground_truth

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """The model cannot be evaluated on this dataset as asked (other classes, multi-label on top-K)."""


# (1, 3, S, S) float32, conf, multi_label -> (boxes xyxy, scores, class ids) in letterboxed pixels
Predictor = Callable[[np.ndarray, float, bool], tuple[np.ndarray, np.ndarray, np.ndarray]]


def torch_predictor(checkpoint: Path) -> tuple[Predictor, int, list[str]]:
    import torch

    import yolor

    model = yolor.load_model(checkpoint)
    layout = head_layout("raw")  # the checkpoint's forward is the raw head's layout

    def predict(x: np.ndarray, conf: float, multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        assert isinstance(out, torch.Tensor)
        return layout.candidates(out[0].numpy(), conf, multi_label=multi_label)

    return predict, model.input_size, model.class_names


def onnx_predictor(model_dir: Path) -> tuple[Predictor, int, list[str]]:
    """The exported folder's FP32 ONNX loaded as `yolor serve --backend onnxruntime --device cpu` loads
    it (create_backend: the file checked against the manifest's sha256, the host's threads), rows read
    through the manifest's head contract."""
    from service.backends import create_backend
    from service.manifest import load_manifest
    from service.settings import Settings

    manifest = load_manifest(model_dir)
    settings = Settings(model_dir=model_dir, backend="onnxruntime", device="cpu", precision="fp32")
    backend = create_backend(settings, manifest)
    layout = head_layout(manifest.head)

    def predict(x: np.ndarray, conf: float, multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = backend.infer(x)
        try:
            return layout.candidates(out[0], conf, multi_label=multi_label)
        except ValueError as e:  # multi-label on the top-K head: the message says to export --head raw
            raise EvaluationError(f"{model_dir}: {e}") from e

    return predict, manifest.input_size, manifest.class_names


def evaluate_model(
    model: Path,
    data: Path,
    split: str = "val",
    *,
    conf: float = 0.001,
    iou: float = 0.65,
    max_det: int = 300,
    multi_label: bool = False,
) -> dict[str, Any]:
    """mAP of `model` (a .pt checkpoint or an exported folder) on `data`'s `split`, boxes compared in
    original-image pixels. Thresholds are the official test-time ones (conf 0.001, NMS IoU 0.65).
    By default one class per box, as the service answers; ``multi_label`` keeps every class above
    ``conf`` per box, as the official ``test.py`` does (for comparing with published numbers)."""
    predict, size, names = onnx_predictor(model) if model.is_dir() else torch_predictor(model)
    dataset = load_dataset(data, split)
    if list(dataset.names) != list(names):
        raise EvaluationError(f"model classes {names} differ from the dataset's {list(dataset.names)}")
    gts, preds = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        boxed, lb = letterbox(sample.image, size)
        boxes, scores, class_ids = predict(to_input_tensor([boxed]), conf, multi_label)
        dets = select_detections(boxes, scores, class_ids, conf=conf, iou=iou, max_det=max_det)
        preds.append((scale_boxes(dets.boxes, lb), dets.scores, dets.class_ids))
        gts.append(ground_truth(sample.boxes, sample.classes, sample.crowd))
    metrics = coco_map(gts, preds, len(names))
    metrics.update(
        images=len(dataset), split=split, conf=conf, iou=iou, input_size=size, multi_label=multi_label
    )
    return metrics
