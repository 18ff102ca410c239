"""A real exported YOLOR served on ONNX Runtime: detections equal the exported model run by hand."""

from __future__ import annotations

import numpy as np
import pytest

from service.manifest import load_manifest
from service.processing import (
    decode_raw_predictions,
    letterbox,
    scale_boxes,
    select_detections,
    to_input_tensor,
)
from service.settings import Settings
from tests.support.app import encode, files, running

pytestmark = [pytest.mark.api, pytest.mark.slow, pytest.mark.anyio]
ort = pytest.importorskip("onnxruntime")


def photos() -> list[np.ndarray]:
    from skimage import data

    return [data.coffee(), data.chelsea()[:, :300], np.ascontiguousarray(data.rocket()[::2, ::3])]


@pytest.fixture(params=["topk", "raw"])
def model_dir(request, exported):
    """Each tiny net of tests/conftest.py as exported there (both heads): no export of its own."""
    return exported[request.param]


def by_hand(model_dir, image: np.ndarray, conf: float, iou: float) -> list[tuple[list[float], float, int]]:
    manifest = load_manifest(model_dir)
    boxed, lb = letterbox(image, manifest.input_size)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": to_input_tensor([boxed])})
    if manifest.head == "raw":
        boxes, scores, class_ids = decode_raw_predictions(out[0], conf)
    else:
        boxes, scores, class_ids = out[0][:, :4], out[0][:, 4], out[0][:, 5].astype(np.int64)
    kept = select_detections(boxes, scores, class_ids, conf=conf, iou=iou, max_det=300)
    return list(
        zip(scale_boxes(kept.boxes, lb).tolist(), kept.scores.tolist(), kept.class_ids.tolist(), strict=True)
    )


@pytest.mark.parametrize(("conf", "iou"), [(0.25, 0.45), (0.5, 0.3)])
async def test_served_yolor_equals_exported_model(model_dir, conf, iou):
    from service.http.app import create_app

    app = create_app(Settings(model_dir=model_dir, backend="onnxruntime", device="cpu", max_batch_size=4))
    total = 0
    async with running(app) as client:
        for image in photos():  # one at a time: batch 1, exactly what the direct run does
            r = await client.post("/detect", files=files(encode(image)), params={"conf": conf, "iou": iou})
            assert r.status_code == 200, r.text
            (result,) = r.json()["results"]
            assert (result["height"], result["width"]) == image.shape[:2]
            expected = by_hand(model_dir, image, conf, iou)
            served = result["detections"]
            assert [d["class_id"] for d in served] == [c for _, _, c in expected]
            assert [d["score"] for d in served] == pytest.approx([s for _, s, _ in expected], abs=1e-5)
            for detection, (box, _, _) in zip(served, expected, strict=True):
                assert detection["box"] == pytest.approx(box, abs=0.006)
            total += len(served)
    assert total > 0  # the comparison is not vacuous
