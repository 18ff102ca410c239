"""POST /detect, /detect/json and /detect/annotated through the real app, over fake backends."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from service.processing import letterbox
from tests.support.app import encode, fake_app, files, red_scored, running, solid, topk_rows

pytestmark = [pytest.mark.api, pytest.mark.anyio]

# Three non-overlapping boxes (letterboxed 64x64 input pixels) of classes person, car, dog.
THREE = [[2, 2, 12, 12, 0.9, 0], [20, 20, 30, 30, 0.5, 1], [40, 40, 50, 50, 0.3, 2]]


def boxes_of(body: dict, image: int = 0) -> list[list[float]]:
    return [d["box"] for d in body["results"][image]["detections"]]


async def test_multi_image_results_in_request_order_and_batched_together(tmp_path):
    app, made = fake_app(tmp_path, red_scored, max_delay_ms=50)
    reds = [10, 200, 90]
    async with running(app) as client:
        made["backend"].batch_sizes.clear()  # drop the warm-up batches
        blobs = [encode(solid(64, 64, (r, 0, 0))) for r in reds]
        r = await client.post("/detect", files=files(*blobs), params={"conf": 0})
    assert r.status_code == 200, r.text
    scores = [res["detections"][0]["score"] for res in r.json()["results"]]
    assert scores == pytest.approx([red / 255 for red in reds], abs=1e-5)
    assert made["backend"].batch_sizes == [3]


async def test_response_shape(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(THREE))
    async with running(app) as client:
        r = await client.post("/detect", files=files(encode(solid(64, 64, (1, 2, 3)))))
    body = r.json()
    assert set(body) == {"model", "results", "timing_ms"}
    assert body["model"] == {
        **{"name": "yolor", "version": 1},  # YOLOR_V2_MODEL_NAME: one model folder is version 1
        **{"arch": "tiny-test", "backend": "fake", "precision": "fp32", "input_size": 64},
    }
    assert set(body["timing_ms"]) == {"preprocess", "queue", "inference", "postprocess", "total"}
    assert body["results"][0]["width"] == 64 and body["results"][0]["height"] == 64
    assert body["results"][0]["detections"][0] == {
        "box": [2.0, 2.0, 12.0, 12.0],
        "score": 0.9,
        "class_id": 0,
        "class_name": "person",
    }


@pytest.mark.parametrize(
    ("params", "expected_classes"),
    [
        ({}, [0, 1, 2]),  # default conf 0.25
        ({"conf": 0.4}, [0, 1]),
        ({"conf": 0.95}, []),
        ({"max_det": 1}, [0]),
        ({"classes": "1"}, [1]),
        ({"classes": "car"}, [1]),
        ({"classes": "person,dog"}, [0, 2]),
        ({"classes": ["0", "dog"]}, [0, 2]),
        ("conf=0.95&conf=0.4", [0, 1]),  # a repeated parameter: its last value, as FastAPI reads it
        ("classes=2&classes=person", [0, 2]),  # classes: every value
        ("conf=0.4&unknown=1", [0, 1]),  # other parameters are ignored
    ],
)
async def test_per_request_thresholds_and_class_filters(tmp_path, params, expected_classes):
    app, _ = fake_app(tmp_path, topk_rows(THREE))
    image = files(encode(solid(64, 64, (0, 0, 0))))
    async with running(app) as client:
        r = await client.post("/detect", files=image, params=params)
        annotated = await client.post("/detect/annotated", files=image, params=params)
    assert r.status_code == 200, r.text
    assert [d["class_id"] for d in r.json()["results"][0]["detections"]] == expected_classes
    assert annotated.headers["x-detections"] == str(len(expected_classes))  # the same query reading


async def test_nms_iou_and_agnostic_are_per_request(tmp_path):
    # Rows 0/1: same class, IoU 0.68; rows 1/2: different classes, identical boxes.
    rows = [[10, 10, 40, 40, 0.9, 0], [12, 12, 42, 42, 0.8, 0], [12, 12, 42, 42, 0.7, 1]]
    app, _ = fake_app(tmp_path, topk_rows(rows))
    image = files(encode(solid(64, 64, (0, 0, 0))))
    async with running(app) as client:
        default = await client.post("/detect", files=image)
        loose = await client.post("/detect", files=image, params={"iou": 0.9})
        agnostic = await client.post("/detect", files=image, params={"agnostic": "true"})
    assert [d["score"] for d in default.json()["results"][0]["detections"]] == [0.9, 0.7]
    assert [d["score"] for d in loose.json()["results"][0]["detections"]] == [0.9, 0.8, 0.7]
    assert [d["score"] for d in agnostic.json()["results"][0]["detections"]] == [0.9]


@pytest.mark.parametrize(
    ("height", "width", "letterboxed", "original"),
    [
        # 64x128 -> scale 0.5, 32 px of padding above and below (16 each)
        (64, 128, [8, 20, 40, 36], [16, 8, 80, 40]),
        (64, 128, [0, 10, 64, 60], [0, 0, 128, 64]),  # reaching into the padding: clipped to the image
        # 100x50 -> scale 0.64, 16 px of padding left
        (100, 50, [24, 16, 40, 48], [12.5, 25, 37.5, 75]),
    ],
)
async def test_boxes_are_scaled_back_to_original_pixels(tmp_path, height, width, letterboxed, original):
    app, _ = fake_app(tmp_path, topk_rows([[*letterboxed, 0.9, 0]]))
    async with running(app) as client:
        r = await client.post("/detect", files=files(encode(solid(height, width, (5, 5, 5)))))
    result = r.json()["results"][0]
    assert (result["width"], result["height"]) == (width, height)
    assert boxes_of(r.json()) == [pytest.approx(original, abs=0.01)]


async def test_letterbox_geometry_matches_processing(tmp_path):
    """The service letterboxes exactly as service.processing.letterbox: a box on the image border maps
    to the whole image."""
    _, lb = letterbox(solid(37, 91, (0, 0, 0)), 64)
    x1, y1 = lb.pad_left, lb.pad_top
    x2, y2 = x1 + 91 * lb.scale_x, y1 + 37 * lb.scale_y
    app, _ = fake_app(tmp_path, topk_rows([[x1, y1, x2, y2, 0.9, 2]]))
    async with running(app) as client:
        r = await client.post("/detect", files=files(encode(solid(37, 91, (0, 0, 0)))))
    assert boxes_of(r.json()) == [pytest.approx([0, 0, 91, 37], abs=0.01)]


async def test_single_image_field_and_both_fields(tmp_path):
    app, _ = fake_app(tmp_path, red_scored)
    one, two = encode(solid(64, 64, (51, 0, 0))), encode(solid(64, 64, (102, 0, 0)))
    async with running(app) as client:
        single = await client.post("/detect", files=files(one, field="image"), params={"conf": 0})
        both = await client.post("/detect", files=files(one) + files(two, field="image"), params={"conf": 0})
    assert [res["detections"][0]["score"] for res in single.json()["results"]] == pytest.approx([0.2])
    assert [res["detections"][0]["score"] for res in both.json()["results"]] == pytest.approx([0.2, 0.4])


async def test_raw_head_is_decoded_then_filtered(tmp_path):
    def raw(batch: np.ndarray) -> np.ndarray:
        out = np.zeros((len(batch), 12, 8), np.float32)
        out[:, 0] = [32, 32, 16, 16, 0.9, 0.1, 0.8, 0.1]  # car, score 0.72
        out[:, 1] = [33, 33, 16, 16, 0.8, 0.1, 0.7, 0.2]  # car, suppressed by NMS
        out[:, 2] = [10, 10, 4, 4, 0.2, 0.0, 0.0, 1.0]  # obj below conf
        return out

    app, _ = fake_app(tmp_path, raw, head="raw")
    async with running(app) as client:
        r = await client.post("/detect", files=files(encode(solid(64, 64, (0, 0, 0)))))
    detections = r.json()["results"][0]["detections"]
    assert [(d["class_name"], d["score"]) for d in detections] == [("car", pytest.approx(0.72, abs=1e-5))]
    assert detections[0]["box"] == pytest.approx([24, 24, 40, 40])


async def test_json_variant_equals_multipart(tmp_path):
    app, _ = fake_app(tmp_path, red_scored)
    blobs = [encode(solid(30, 80, (200, 0, 0))), encode(solid(64, 64, (40, 0, 0)), ".jpg")]
    payload = [base64.b64encode(b).decode() for b in blobs]
    payload[1] = "data:image/jpeg;base64," + payload[1]  # as a browser's FileReader sends it
    async with running(app) as client:
        multipart = await client.post("/detect", files=files(*blobs), params={"conf": 0.01})
        as_json = await client.post("/detect/json", json={"images": payload, "conf": 0.01})
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["results"] == multipart.json()["results"]
    assert len(as_json.json()["results"]) == 2


async def test_json_variant_parameters(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(THREE))
    image = base64.b64encode(encode(solid(64, 64, (0, 0, 0)))).decode()
    async with running(app) as client:
        r = await client.post("/detect/json", json={"images": [image], "conf": 0.4, "classes": ["car", 0]})
    assert [d["class_id"] for d in r.json()["results"][0]["detections"]] == [0, 1]


async def test_annotated_image(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows([[8, 20, 40, 36, 0.9, 1]]))
    original = solid(64, 128, (128, 128, 128))
    async with running(app) as client:
        r = await client.post("/detect/annotated", files=files(encode(original)))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-detections"] == "1"
    annotated = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert annotated.shape == (64, 128, 3)
    diff = np.abs(annotated.astype(int) - 128).max(axis=2)
    # The box is [16, 8, 80, 40] in original pixels: its left edge is drawn, a far corner is not.
    assert diff[20:30, 14:19].max(axis=1).min() > 40  # every row crosses the edge
    assert diff[60:, 100:].max() < 10  # JPEG noise only
    assert (diff > 40).mean() > 0.02


async def test_annotated_takes_one_image(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(THREE))
    blob = encode(solid(64, 64, (0, 0, 0)))
    async with running(app) as client:
        r = await client.post("/detect/annotated", files=files(blob, blob))
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_parameter"
