"""The demo model's sample image (service/demo_model/sample.jpg + sample.json): reproducible, and the
demo model served by the app (ONNX Runtime, CPU) finds every shape in it."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from service.processing import box_iou
from service.settings import DEMO_MODEL_DIR, Settings
from tests.support.app import files, running
from train.data.synth import CLASS_NAMES
from train.demo_sample import SAMPLE_IMAGE, SAMPLE_LABELS, labels_text, make_sample, write_sample

IMAGE, LABELS = DEMO_MODEL_DIR / SAMPLE_IMAGE, DEMO_MODEL_DIR / SAMPLE_LABELS
MIN_IOU = 0.5


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.mark.unit
def test_regenerating_gives_the_committed_sample(tmp_path):
    jpeg, truth = make_sample()
    committed = json.loads(LABELS.read_text(encoding="utf-8"))
    assert truth == committed  # the labels are exact on every machine
    assert labels_text(truth) == LABELS.read_text(encoding="utf-8")
    assert committed["class_names"] == list(CLASS_NAMES)
    assert len(committed["objects"]) >= 4 and len({o["class_id"] for o in committed["objects"]}) >= 4
    # the JPEG may differ by a few grey levels between OpenCV (libjpeg) builds: compare pixels
    ours, shipped = decode(jpeg).astype(np.int16), decode(IMAGE.read_bytes()).astype(np.int16)
    assert ours.shape == shipped.shape == (committed["height"], committed["width"], 3)
    assert np.abs(ours - shipped).mean() < 1.0
    assert IMAGE.stat().st_size < 100_000
    written = write_sample(tmp_path)
    assert [p.name for p in written] == [SAMPLE_IMAGE, SAMPLE_LABELS]
    assert json.loads(written[1].read_text(encoding="utf-8")) == committed


def match(truth: list[dict], detections: list[dict]) -> list[tuple[dict, dict | None, float]]:
    """Each ground-truth object with the best-overlapping unused detection of its class (greedy, by IoU)."""
    if not detections:
        return [(t, None, 0.0) for t in truth]
    iou = box_iou([t["box"] for t in truth], [d["box"] for d in detections])
    used: set[int] = set()
    pairs = []
    for i, t in enumerate(truth):
        candidates = [j for j, d in enumerate(detections) if j not in used and d["class_id"] == t["class_id"]]
        j = max(candidates, key=lambda k: iou[i, k], default=None)
        if j is None or iou[i, j] < MIN_IOU:
            pairs.append((t, None, float(iou[i].max())))
            continue
        used.add(j)
        pairs.append((t, detections[j], float(iou[i, j])))
    return pairs


@pytest.mark.api
@pytest.mark.anyio
async def test_the_served_demo_model_detects_the_sample():
    pytest.importorskip("onnxruntime")
    from service.http.app import create_app

    labels = json.loads(LABELS.read_text(encoding="utf-8"))
    truth = labels["objects"]
    app = create_app(Settings(model_dir=DEMO_MODEL_DIR, backend="onnxruntime", device="cpu"))
    async with running(app) as client:
        info = (await client.get("/model")).json()
        sample = await client.get(info["sample_image"])
        r = await client.post("/detect", files=files(sample.content))
    assert info["backend"] == "onnxruntime" and info["sample_image"] == "/model/sample"
    assert sample.status_code == 200 and sample.headers["content-type"] == "image/jpeg"
    assert sample.content == IMAGE.read_bytes()
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert (result["width"], result["height"]) == (labels["width"], labels["height"])
    detections = result["detections"]
    pairs = match(truth, detections)
    missed = [(t["class_name"], t["box"], round(best, 2)) for t, d, best in pairs if d is None]
    assert not missed, f"not found (class, box, best IoU): {missed}; detections: {detections}"
    assert all(d["class_name"] == t["class_name"] for t, d, _ in pairs if d is not None)
    assert len(detections) == len(truth), detections  # and nothing else at the default conf (0.25)
