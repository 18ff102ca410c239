"""`yolor eval`: COCO mAP of a checkpoint (PyTorch) or of an exported model folder (ONNX Runtime, i.e.
what the service runs) on a dataset split, with the serving pre- and post-processing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.backends.base import Backend
from service.processing import head_layout, letterbox, scale_boxes, select_detections, to_input_tensor
from service.processing.heads import Head, HeadLayout
from service.settings import Precision
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


def onnx_predictor(model_dir: Path, precision: Precision = "fp32") -> tuple[Predictor, int, list[str]]:
    """The exported folder's ONNX of `precision` (fp32, fp16 or int8) loaded as `yolor serve
    --backend onnxruntime --device cpu --precision P` loads it (create_backend: the file checked
    against the manifest's sha256, the host's threads), rows read through the manifest's head contract."""
    from service.backends.factory import create_backend
    from service.manifest import load_manifest
    from service.settings import Settings

    manifest = load_manifest(model_dir)
    settings = Settings(model_dir=model_dir, backend="onnxruntime", device="cpu", precision=precision)
    backend = create_backend(settings, manifest)
    predict = _predictor(backend, head_layout(manifest.head), str(model_dir))
    return predict, manifest.input_size, manifest.class_names


def onnx_file_predictor(path: Path, head: Head, img_size: int) -> Predictor:
    """One ONNX file run by the serving ONNX Runtime backend on the CPU (e.g. before it has a folder)."""
    from service.backends.onnx_runtime import OnnxRuntimeBackend
    from service.host import host_cpu_count

    backend = OnnxRuntimeBackend(
        path, head=head, max_batch_size=1, profile=("images", img_size), intra_op_threads=host_cpu_count()
    )
    return _predictor(backend, head_layout(head), str(path))


def _predictor(backend: Backend, layout: HeadLayout, name: str) -> Predictor:
    def predict(x: np.ndarray, conf: float, multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = backend.infer(x)
        try:
            return layout.candidates(out[0], conf, multi_label=multi_label)
        except ValueError as e:  # multi-label on the top-K head: the message says to export --head raw
            raise EvaluationError(f"{name}: {e}") from e

    return predict


def evaluate_model(
    model: Path,
    data: Path,
    split: str = "val",
    *,
    conf: float = 0.001,
    iou: float = 0.65,
    max_det: int = 300,
    multi_label: bool = False,
    precision: Precision = "fp32",
) -> dict[str, Any]:
    """mAP of `model` (a .pt checkpoint or an exported folder, its ONNX of `precision`) on `data`'s
    `split`, boxes compared in original-image pixels. Thresholds are the official test-time ones
    (conf 0.001, NMS IoU 0.65). By default one class per box, as the service answers;
    ``multi_label`` keeps every class above ``conf`` per box, as the official ``test.py`` does (for
    comparing with published numbers)."""
    if model.is_dir():
        predict, size, names = onnx_predictor(model, precision)
    else:
        predict, size, names = torch_predictor(model)
    metrics = dataset_map(
        predict, size, names, data, split, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label
    )
    metrics.update(precision=precision if model.is_dir() else "fp32 (PyTorch)")
    return metrics


def dataset_map(
    predict: Predictor,
    size: int,
    names: Sequence[str],
    data: Path,
    split: str = "val",
    *,
    conf: float = 0.001,
    iou: float = 0.65,
    max_det: int = 300,
    multi_label: bool = False,
) -> dict[str, Any]:
    """COCO mAP of `predict` on `data`'s `split` with the serving letterbox and NMS."""
    dataset = load_dataset(data, split)
    if list(dataset.names) != list(names):
        raise EvaluationError(f"model classes {list(names)} differ from the dataset's {list(dataset.names)}")
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
