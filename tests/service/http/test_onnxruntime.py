"""The real app on ONNX Runtime with a tiny exported model: served detections equal the model run directly."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.processing import letterbox, scale_boxes, select_detections, to_input_tensor
from service.settings import Settings
from tests.support.app import encode, files, running, solid
from tests.support.model_files import write_model_dir

pytestmark = [pytest.mark.api, pytest.mark.anyio]
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

IMAGES = [solid(40, 100, (250, 30, 180)), solid(100, 60, (20, 220, 90)), solid(64, 64, (150, 150, 150))]


def direct(model_path, image: np.ndarray, *, conf: float, iou: float) -> list[tuple[list[float], float, int]]:
    """The exported model run by hand: letterbox, ONNX Runtime, threshold + NMS, boxes back to pixels."""
    boxed, lb = letterbox(image, 64)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": to_input_tensor([boxed])})
    rows = out[0]
    kept = select_detections(
        rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64), conf=conf, iou=iou, max_det=300
    )
    boxes = scale_boxes(kept.boxes, lb)
    return [
        (b.tolist(), float(s), int(c)) for b, s, c in zip(boxes, kept.scores, kept.class_ids, strict=True)
    ]


@pytest.fixture
def onnx_app(tmp_path):
    from service.http.app import create_app

    write_model_dir(tmp_path, onnx=True)
    settings = Settings(model_dir=tmp_path, backend="onnxruntime", device="cpu", max_delay_ms=20)
    return create_app(settings), tmp_path / "model.onnx"


@pytest.mark.parametrize(("conf", "iou"), [(0.25, 0.45), (0.5, 0.45), (0.1, 0.95)])
async def test_served_detections_equal_the_model_run_directly(onnx_app, conf, iou):
    app, model_path = onnx_app
    async with running(app) as client:
        r = await client.post("/detect", files=files(*map(encode, IMAGES)), params={"conf": conf, "iou": iou})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(IMAGES)
    for image, result in zip(IMAGES, results, strict=True):
        expected = direct(model_path, image, conf=conf, iou=iou)
        served = result["detections"]
        assert (result["height"], result["width"]) == image.shape[:2]
        assert [d["class_id"] for d in served] == [c for _, _, c in expected]
        assert [d["score"] for d in served] == pytest.approx([s for _, s, _ in expected], abs=1e-5)
        for detection, (box, _, _) in zip(served, expected, strict=True):
            assert detection["box"] == pytest.approx(box, abs=0.006)
    assert sum(len(r["detections"]) for r in results) > 0  # the comparison is not vacuous


async def test_concurrent_requests_share_onnxruntime_batches(onnx_app):
    app, _ = onnx_app
    async with running(app) as client:
        info = (await client.get("/model")).json()
        blobs = [encode(image) for image in IMAGES]
        responses = await asyncio.gather(*(client.post("/detect", files=files(blob)) for blob in blobs * 2))
        metrics = (await client.get("/metrics")).text
    assert info["backend"] == "onnxruntime" and "CPUExecutionProvider" in info["device"]
    assert [r.status_code for r in responses] == [200] * 6
    assert [r.json()["results"][0]["width"] for r in responses] == [100, 60, 64] * 2  # each got its own
    batches = float(metrics.split('yolor_batch_size_count{model="yolor",version="1"} ')[1].split()[0])
    assert batches < 6  # at least two requests were run together


async def test_reduced_jpeg_decoding_answers_in_full_image_pixels(tmp_path):
    """YOLOR_JPEG_REDUCED_DECODE: large JPEGs (here 1/2 and 1/4 of 300-520 px sides for a 64 px
    input) give the full size and, for flat colours that any scale decodes alike, the same boxes."""
    from service.http.app import create_app

    write_model_dir(tmp_path, onnx=True)
    blobs = [
        encode(solid(h, w, rgb), ".jpg")
        for (h, w, rgb) in [(300, 500, (250, 30, 180)), (520, 260, (20, 220, 90))]
    ]
    answers = []
    for reduced in (False, True):
        settings = Settings(
            model_dir=tmp_path, backend="onnxruntime", device="cpu", jpeg_reduced_decode=reduced
        )
        app = create_app(settings)
        async with running(app) as client:
            r = await client.post("/detect", files=files(*blobs), params={"conf": 0.1})
            assert app.state.service.detector.preprocessor.reduced_decode is reduced
        assert r.status_code == 200, r.text
        answers.append(r.json()["results"])
    full, reduced_results = answers
    assert [(x["width"], x["height"]) for x in reduced_results] == [(500, 300), (260, 520)]
    assert sum(len(x["detections"]) for x in full) > 0
    for a, b in zip(full, reduced_results, strict=True):
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
        for da, db in zip(a["detections"], b["detections"], strict=True):
            assert da["box"] == pytest.approx(db["box"], abs=2.0)
            assert da["score"] == pytest.approx(db["score"], abs=1e-3)
