"""POST /detect/video on the demo model: each streamed frame's detections equal /detect's on the same
decoded frame, vid_stride and max_frames pick the frames, the summary counts them, and every limit
answers its 4xx before the stream starts (or, past the first frame, an error line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.app import assert_error, demo_app, encode, running
from tests.support.video import FRAMES, decoded_frames, make_clip, sample_frames

av = pytest.importorskip("av")

pytestmark = [pytest.mark.api, pytest.mark.anyio]


def _app(tmp_path: Path, **settings: Any):
    return demo_app(**settings)


def _lines(response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


async def _post(client, clip: bytes, **query: Any):
    files = {"video": ("clip.mp4", clip, "video/mp4")}
    return await client.post("/detect/video", params=query, files=files, timeout=60)


@pytest.fixture(scope="module")
def clip() -> bytes:
    return make_clip()


async def test_every_streamed_frame_equals_detect_on_that_frame(tmp_path, clip):
    decoded = decoded_frames(clip)
    async with running(_app(tmp_path)) as client:
        lines = _lines(await _post(client, clip, vid_stride=3, conf=0.3))
        frames, summary = lines[:-1], lines[-1]["summary"]
        assert [f["frame"] for f in frames] == [0, 3, 6, 9]
        assert [f["pts_s"] for f in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9])
        assert (summary["frames_read"], summary["frames_processed"]) == (FRAMES, 4)
        assert summary["video"] | {"duration_s": None} == {
            "container": "mov,mp4,m4a,3gp,3g2,mj2", "codec": "h264", "width": 192, "height": 256,
            "fps": 10.0, "duration_s": None, "frames": FRAMES,
        }  # fmt: skip
        assert sum(len(f["detections"]) for f in frames) >= 4  # the sample's shapes are found
        for line in frames:
            png = encode(decoded[line["frame"]])
            answer = await client.post("/detect", params={"conf": 0.3}, files={"image": ("f.png", png)})
            want = answer.json()["results"][0]
            assert (line["width"], line["height"]) == (want["width"], want["height"]) == (192, 256)
            assert [d["class_id"] for d in line["detections"]] == [d["class_id"] for d in want["detections"]]
            for got, ref in zip(line["detections"], want["detections"], strict=True):
                assert got["box"] == pytest.approx(ref["box"], abs=0.02)
                assert got["score"] == pytest.approx(ref["score"], abs=1e-4)
                assert got["class_name"] == ref["class_name"]


async def test_max_frames_and_stride_pick_the_frames(tmp_path, clip):
    async with running(_app(tmp_path)) as client:
        lines = _lines(await _post(client, clip, max_frames=2, vid_stride=5))
        assert [line.get("frame") for line in lines[:-1]] == [0, 5]
        assert lines[-1]["summary"]["frames_processed"] == 2
        metrics = (await client.get("/metrics")).text
        assert 'yolor_video_frames_total{model="yolor",state="processed",version="1"} 2.0' in metrics
        assert 'yolor_video_requests_total{model="yolor",version="1"} 1.0' in metrics


@pytest.mark.slow  # several real clips refused over HTTP
async def test_refusals_before_the_stream(tmp_path, clip):
    app = _app(tmp_path, max_video_bytes=len(clip) - 1, video_codecs=["vp9"])
    async with running(app) as client:
        assert_error(await _post(client, clip), 413, "payload_too_large")
    async with running(_app(tmp_path, video_codecs=["vp9", "av1"])) as client:
        message = assert_error(await _post(client, clip), 415, "unsupported_video")
        assert "'h264'" in message and "av1, vp9" in message
        assert_error(await _post(client, b"\x00not a video" * 100), 422, "invalid_video")
        assert_error(await _post(client, clip[: len(clip) // 2]), 422, "invalid_video")  # moov at the end
        assert_error(await _post(client, clip, vid_stride=0), 422, "invalid_request")
        assert_error(await _post(client, clip, classes="unicorn"), 422, "invalid_parameter")
        text = await client.post("/detect/video", content=clip, headers={"content-type": "video/mp4"})
        assert_error(text, 415, "unsupported_media_type")
    async with running(_app(tmp_path, max_video_frames=FRAMES - 1)) as client:
        assert_error(await _post(client, clip), 413, "video_too_long")  # the container declares 12
    async with running(_app(tmp_path, max_video_seconds=0.5)) as client:
        assert_error(await _post(client, clip), 413, "video_too_long")
    async with running(_app(tmp_path, max_image_pixels=192 * 256 - 1)) as client:
        assert_error(await _post(client, clip), 413, "too_many_pixels")


async def test_a_limit_reached_mid_stream_ends_with_an_error_line(tmp_path):
    """MPEG-TS declares no frame count: the 6th frame read is past max_video_frames=5."""
    ts = make_clip(fmt="mpegts")
    async with running(_app(tmp_path, max_video_frames=5)) as client:
        lines = _lines(await _post(client, ts))
        assert [line.get("frame") for line in lines[:-2]] == [0, 1, 2, 3, 4]
        assert lines[-2]["error"]["code"] == "video_too_long"
        assert lines[-1]["summary"]["frames_processed"] == 5
        # the server goes on: a still image is answered after it
        answer = await client.post("/detect", files={"image": ("f.png", encode(sample_frames()[0]))})
        assert answer.status_code == 200


@pytest.mark.slow
def test_a_client_that_goes_away_stops_the_decoding(tmp_path):
    """A real server; the backend takes 30 ms a batch. The client reads one line of a 240-frame
    clip and closes: the clip's decoding stops (the decoded count stays where it was, far short of
    240) and the server answers the next request."""
    import time

    import httpx

    from tests.support.app import fake_app, serving, topk_rows, wait_for

    def slow(batch):
        time.sleep(0.03)
        return topk_rows([[2, 2, 12, 12, 0.9, 0]])(batch)

    app, _ = fake_app(tmp_path / "model", slow, max_batch_size=4)
    clip = make_clip(sample_frames(240))
    metrics = app.state.service.metrics

    def decoded() -> float:
        return metrics.video_frames.labels(model="yolor", version="1", state="decoded")._value.get()

    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, "the server never became ready")
        files = {"video": ("clip.mp4", clip, "video/mp4")}
        with client.stream("POST", "/detect/video", files=files) as response:
            assert response.status_code == 200
            first = next(response.iter_lines())
            assert json.loads(first)["frame"] == 0
        time.sleep(1.0)
        stopped_at = decoded()
        time.sleep(0.5)
        assert decoded() == stopped_at < 120, stopped_at
        still = {"image": ("f.png", encode(sample_frames(1)[0]))}
        assert client.post("/detect", files=still).status_code == 200


async def test_annotated_answers_a_playable_video_with_the_boxes_drawn(tmp_path, clip):
    """annotated=true: an MP4 (H.264, fragmented) of the processed frames, their size, at the clip's
    rate / vid_stride, that differs from the decoded input frame on the drawn boxes' outlines and
    hardly anywhere else (the codec's loss)."""
    import io

    import av

    from service.processing import Detections
    from service.processing.drawing import draw_detections

    decoded = decoded_frames(clip)
    async with running(_app(tmp_path)) as client:
        lines = _lines(await _post(client, clip, vid_stride=2, conf=0.3))
        response = await _post(client, clip, vid_stride=2, conf=0.3, annotated="true")
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 192, 256)
        assert float(stream.average_rate) == pytest.approx(5.0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == len(lines) - 1 == 6
    names = ["circle", "rectangle", "triangle", "star", "cross", "ellipse", "ring"]
    for got, line in zip(frames, lines[:-1], strict=True):
        source = decoded[line["frame"]]
        dets = line["detections"]
        boxes = Detections(
            np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
            np.array([d["score"] for d in dets], np.float32),
            np.array([d["class_id"] for d in dets], np.int64),
        )
        drawn = np.abs(draw_detections(source, boxes, names).astype(int) - source).sum(axis=2) > 60
        diff = np.abs(got.astype(int) - source).sum(axis=2)
        assert drawn.any() and diff[drawn].mean() > 60 > 3 * diff[~drawn].mean(), (
            diff[drawn].mean(),
            diff[~drawn].mean(),
        )


async def test_tracking_gives_ids_without_changing_the_detections(tmp_path, clip):
    """track=true: the same detections as without (tracking runs on the low-score boxes first, then
    conf applies), each with a track_id, unique within a frame; the shapes, moving 6 px a frame, keep
    their ids; the summary lists each track's class, first and last frame and count as the lines say."""
    async with running(_app(tmp_path)) as client:
        plain = _lines(await _post(client, clip, conf=0.3))
        tracked = _lines(await _post(client, clip, conf=0.3, track="true"))
        bad = await _post(client, clip, track="true", track_low_thresh=0.7, track_high_thresh=0.5)
    assert_error(bad, 422, "invalid_parameter")
    seen: dict[int, list[int]] = {}
    for p, t in zip(plain[:-1], tracked[:-1], strict=True):
        assert [{k: v for k, v in d.items() if k != "track_id"} for d in t["detections"]] == p["detections"]
        ids = [d["track_id"] for d in t["detections"]]
        assert all("track_id" in d for d in t["detections"])
        assert len({i for i in ids if i is not None}) == len([i for i in ids if i is not None])
        for d in t["detections"]:
            if d["track_id"] is not None:
                seen.setdefault(d["track_id"], []).append(t["frame"])
    later = [d for line in tracked[2:-1] for d in line["detections"]]
    assert sum(d["track_id"] is not None for d in later) >= 0.8 * len(later)
    per_frame = max(len(line["detections"]) for line in tracked[:-1])
    assert len(seen) <= per_frame + 2  # a shape wrapping round the edge may start again
    tracks = {t["track_id"]: t for t in tracked[-1]["summary"]["tracks"]}
    assert set(tracks) == set(seen)
    for track_id, frames in seen.items():
        t = tracks[track_id]
        assert (t["first_frame"], t["last_frame"], t["frames"]) == (frames[0], frames[-1], len(frames))


async def test_sliced_frames_equal_detect_sliced_on_that_frame(tmp_path, clip):
    """tile=true with 128 px windows: each frame is cut as /detect cuts an image, its windows' and
    whole frame's detections merged the same way."""
    decoded = decoded_frames(clip)
    query = {"conf": 0.3, "tile": "true", "tile_size": 128}
    async with running(_app(tmp_path)) as client:
        lines = _lines(await _post(client, clip, vid_stride=4, **query))
        assert [line["frame"] for line in lines[:-1]] == [0, 4, 8]
        for line in lines[:-1]:
            files = {"image": ("f.png", encode(decoded[line["frame"]]))}
            want = (await client.post("/detect", params=query, files=files)).json()["results"][0]
            assert want["tiles"] > 1
            assert [d["class_id"] for d in line["detections"]] == [d["class_id"] for d in want["detections"]]
            for got, ref in zip(line["detections"], want["detections"], strict=True):
                assert got["box"] == pytest.approx(ref["box"], abs=0.02)
                assert got["score"] == pytest.approx(ref["score"], abs=1e-4)
        too_many = await _post(client, clip, tile="true", tile_size=32)
    assert_error(too_many, 413, "too_many_tiles")


async def test_a_portrait_phone_clip_is_detected_upright(tmp_path, clip):
    """A clip stored landscape with a display matrix (as phones record portrait): each frame is
    detected as players show it, equal to /detect on that frame turned upright."""
    from tests.support.video import with_display_matrix

    portrait = with_display_matrix(clip)
    upright = [np.ascontiguousarray(np.rot90(f, -1)) for f in decoded_frames(clip)]
    async with running(_app(tmp_path)) as client:
        lines = _lines(await _post(client, portrait, vid_stride=6, conf=0.3))
        for line in lines[:-1]:
            assert (line["width"], line["height"]) == (256, 192)
            files = {"image": ("f.png", encode(upright[line["frame"]]))}
            want = (await client.post("/detect", params={"conf": 0.3}, files=files)).json()["results"][0]
            assert [d["class_id"] for d in line["detections"]] == [d["class_id"] for d in want["detections"]]
            for got, ref in zip(line["detections"], want["detections"], strict=True):
                assert got["box"] == pytest.approx(ref["box"], abs=0.02)
