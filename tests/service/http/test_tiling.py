"""Sliced inference through the real app: a large image's small objects found once each, in image
pixels, with the slices batched together; limits and parameters."""

from __future__ import annotations

import asyncio
import base64
import time

import cv2
import numpy as np
import pytest

from service.processing import box_iou
from tests.support.app import assert_error, encode, fake_app, files, running
from tests.support.model_files import MAX_BATCH, TOP_K

pytestmark = [pytest.mark.api, pytest.mark.anyio]

SIDE = 20  # the squares' side in image pixels
SQUARES = [(60 + 150 * i, 60 + 150 * j) for i in range(6) for j in range(4)]  # 24, at most 4 per window


def large_image() -> tuple[np.ndarray, np.ndarray]:
    """A 1000x750 black image with white squares, and their boxes."""
    image = np.zeros((750, 1000, 3), np.uint8)
    for x, y in SQUARES:
        image[y : y + SIDE, x : x + SIDE] = 255
    return image, np.asarray([[x, y, x + SIDE, y + SIDE] for x, y in SQUARES], np.float32)


def blob_finder(batch: np.ndarray) -> np.ndarray:
    """A fake top-K model that finds white blobs of at least 4x4 input pixels, scored by area
    (a whole square beats the part of it a window cuts off)."""
    out = np.zeros((len(batch), TOP_K, 6), np.float32)
    for i, tensor in enumerate(batch):
        mask = (tensor[0] > 0.8).astype(np.uint8)
        _count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        rows = [
            (x, y, x + w, y + h, 0.3 + 0.6 * min(1.0, area / 100), 0)
            for x, y, w, h, area in stats[1:]
            if w >= 4 and h >= 4
        ]
        rows = sorted(rows, key=lambda r: -r[4])[:TOP_K]
        if rows:
            out[i, : len(rows)] = rows
    return out


def found(body: dict) -> np.ndarray:
    return np.asarray([d["box"] for d in body["results"][0]["detections"]], np.float32).reshape(-1, 4)


@pytest.mark.parametrize("merge", ["nms", "nmm"])
async def test_tiles_find_every_small_object_once(tmp_path, merge):
    image, truth = large_image()
    app, made = fake_app(tmp_path, blob_finder, max_tiles_per_image=100, max_delay_ms=20)
    params = {"tile": "true", "tile_size": 128, "tile_merge": merge}
    async with running(app) as client:
        untiled = await client.post("/detect", files=files(encode(image)))
        made["backend"].batch_sizes.clear()
        r = await client.post("/detect", files=files(encode(image)), params=params)
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 200, r.text
    assert len(found(untiled.json())) < len(truth) / 2  # 20 px squares shrink to ~1 px untiled
    result = r.json()["results"][0]
    assert result["tiles"] == 80 and (result["width"], result["height"]) == (1000, 750)  # 10 x 8 windows
    boxes = found(r.json())
    assert len(boxes) == len(truth)  # every square once: the parts cut by window edges merged away
    iou = box_iou(boxes, truth)
    assert sorted(iou.argmax(axis=1).tolist()) == list(range(len(truth)))
    assert iou.max(axis=1).min() > 0.75
    assert sum(made["backend"].batch_sizes) == 81 and max(made["backend"].batch_sizes) == MAX_BATCH  # batched
    assert (
        'yolor_tiles_per_image_count{model="yolor",version="1"} 1.0' in metrics
        and 'yolor_tiles_per_image_sum{model="yolor",version="1"} 80.0' in metrics
    )


async def test_auto_tiles_only_large_images_and_the_default_window_grows_to_the_limit(tmp_path):
    image, _truth = large_image()
    app, _ = fake_app(tmp_path, blob_finder, max_tiles_per_image=12)
    async with running(app) as client:
        small = await client.post("/detect", files=files(encode(image[:128, :128])), params={"tile": "auto"})
        large = await client.post("/detect", files=files(encode(image)), params={"tile": "auto"})
    assert small.json()["results"][0]["tiles"] == 0
    assert 1 < large.json()["results"][0]["tiles"] <= 12


async def test_max_det_applies_after_merging(tmp_path):
    image, _ = large_image()
    app, _ = fake_app(tmp_path, blob_finder, max_tiles_per_image=100)
    async with running(app) as client:
        r = await client.post(
            "/detect", files=files(encode(image)), params={"tile": "true", "tile_size": 128, "max_det": 5}
        )
    scores = [d["score"] for d in r.json()["results"][0]["detections"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)


async def test_json_and_annotated_take_the_same_parameters(tmp_path):
    image, truth = large_image()
    app, _ = fake_app(tmp_path, blob_finder, max_tiles_per_image=100)
    blob = encode(image)
    async with running(app) as client:
        body = {"images": [base64.b64encode(blob).decode()], "tile": True, "tile_size": 128}
        as_json = await client.post("/detect/json", json=body)
        drawn = await client.post(
            "/detect/annotated", files=files(blob), params={"tile": "true", "tile_size": 128}
        )
    assert len(found(as_json.json())) == len(truth)
    assert drawn.status_code == 200 and drawn.headers["x-detections"] == str(len(truth))


async def test_limits_and_bad_parameters(tmp_path):
    image, truth = large_image()
    # 2 x (80 windows + the whole image) > the queue's 40: fine, a request queues a few batches at a time
    app, _ = fake_app(tmp_path, blob_finder, max_tiles_per_image=100, queue_size=40)
    blob = encode(image)
    async with running(app) as client:
        two = await client.post("/detect", files=files(blob, blob), params={"tile": "true", "tile_size": 128})
        too_small = await client.post("/detect", files=files(blob), params={"tile": "true", "tile_size": 64})
        bad_mode = await client.post("/detect", files=files(blob), params={"tile": "maybe"})
        bad_overlap = await client.post(
            "/detect", files=files(blob), params={"tile": "true", "tile_overlap": 0.9}
        )
        bad_merge = await client.post(
            "/detect", files=files(blob), params={"tile": "true", "tile_merge": "wbf"}
        )
        default_size = await client.post("/detect", files=files(blob), params={"tile": "true"})
    assert two.status_code == 200, two.text
    assert [len(r["detections"]) for r in two.json()["results"]] == [len(truth)] * 2
    assert "into 285 tiles; at most 100" in assert_error(too_small, 413, "too_many_tiles")
    assert "true, false or auto" in assert_error(bad_mode, 422, "invalid_parameter")
    assert_error(bad_overlap, 422, "invalid_request")
    assert_error(bad_merge, 422, "invalid_request")
    assert default_size.status_code == 200 and 1 < default_size.json()["results"][0]["tiles"] <= 100


async def test_a_sliced_request_leaves_room_for_other_requests(tmp_path):
    """A photo cut into 285 windows keeps a few batches queued at a time (one more than the
    backend runs at once), so a small request that arrives meanwhile waits for those, not for all
    of the sliced request's windows."""
    image, _ = large_image()

    def slow_blobs(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.005)
        return blob_finder(batch)

    app, made = fake_app(tmp_path, slow_blobs, max_tiles_per_image=300)
    async with running(app) as client:
        ran = made["backend"].batch_sizes
        ran.clear()
        sliced = asyncio.create_task(
            client.post("/detect", files=files(encode(image)), params={"tile": "true", "tile_size": 64})
        )
        while len(ran) < 3:  # the sliced request's windows are running
            await asyncio.sleep(0.001)
        sent_at = len(ran)
        small = await client.post("/detect", files=files(encode(image[:64, :64].copy())))
        made_batches = len(ran)
        assert (await sliced).json()["results"][0]["tiles"] == 285
    workers = app.state.service.model.batcher.workers
    assert small.status_code == 200
    # Queued behind at most workers + 1 of the sliced request's batches (not the ~70 left of its
    # 72): the bound leaves room for the batches that run while the small image is still decoded.
    assert made_batches - sent_at < 20, (made_batches, sent_at, workers)
    assert sum(ran) == 286 + 1  # 285 windows + the whole image, and the small image


async def test_tiled_and_untiled_images_of_one_request_keep_their_order(tmp_path):
    image, truth = large_image()
    small = image[40:104, 40:104].copy()  # one square, 64x64: not sliced under auto
    app, _ = fake_app(tmp_path, blob_finder, max_tiles_per_image=100)
    blobs = [encode(image), encode(small), encode(image[:, ::-1].copy())]
    async with running(app) as client:
        r = await client.post("/detect", files=files(*blobs), params={"tile": "auto", "tile_size": 128})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["tiles"] for res in results] == [80, 0, 80]
    assert [(res["width"], res["height"]) for res in results] == [(1000, 750), (64, 64), (1000, 750)]
    assert len(results[0]["detections"]) == len(results[2]["detections"]) == len(truth)
    mirrored = np.asarray([d["box"] for d in results[2]["detections"]])
    expected = np.stack([1000 - truth[:, 2], truth[:, 1], 1000 - truth[:, 0], truth[:, 3]], axis=1)
    assert box_iou(mirrored, expected).max(axis=1).min() > 0.75  # each image's own boxes


async def test_a_bad_file_fails_the_request_and_gives_up_the_windows_already_queued(tmp_path):
    image, _ = large_image()
    app, made = fake_app(tmp_path, blob_finder, max_tiles_per_image=100)
    async with running(app) as client:
        made["backend"].batch_sizes.clear()
        bad = await client.post(
            "/detect", files=files(encode(image), b"not an image"), params={"tile": "true", "tile_size": 128}
        )
        good = await client.post(
            "/detect", files=files(encode(image)), params={"tile": "true", "tile_size": 128}
        )
        metrics = (await client.get("/metrics")).text
    assert_error(bad, 415, "invalid_image")
    assert good.status_code == 200 and good.json()["results"][0]["tiles"] == 80
    ran = sum(made["backend"].batch_sizes)
    assert 81 <= ran < 2 * 81  # the failed request's windows did not all run: the ones queued were dropped
    assert 'yolor_queue_depth{model="yolor",version="1"} 0.0' in metrics
