"""Live streams over HTTP, on the demo model behind a real uvicorn: a clip under YOLOR_STREAM_ROOT
played as a stream, its frames' detections over SSE equal to /detect's on the same decoded frames,
the stream's status, the admin key, the limits, and definitions kept across a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest

from tests.support.app import demo_app, serving
from tests.support.repository import repository, repository_app, score
from tests.support.video import decoded_frames, make_clip, sample_frames

pytest.importorskip("av")
pytestmark = pytest.mark.api

ADMIN = {"X-API-Key": "admin-key-123"}


def _app(tmp_path: Path, **settings: Any):
    settings = {"stream_root": tmp_path / "clips", "state_dir": tmp_path / "state", **settings}
    return demo_app(admin_keys=[ADMIN["X-API-Key"]], **settings)


@pytest.fixture
def clip(tmp_path: Path) -> bytes:
    data = make_clip(sample_frames(20))  # 2 s at 10 fps
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "cam.mp4").write_bytes(data)
    return data


def _ready(client: httpx.Client) -> None:
    give_up = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < give_up, "never ready"
        time.sleep(0.05)


def _sse(client: httpx.Client, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every (event, data) until the server ends the stream."""
    out, event = [], None
    with client.stream("GET", path, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out


@pytest.mark.slow  # real time, real servers
@pytest.mark.parametrize("tiled", [False, True], ids=["whole", "tiled"])
def test_a_file_stream_answers_what_detect_answers_on_each_frame(tmp_path, clip, tiled):
    """Also sliced (`tile`): frames 3x the model input, cut into windows, merged as /detect merges."""
    if tiled:
        clip = make_clip([cv2.resize(f, None, fx=3, fy=3) for f in sample_frames(20)])
        (tmp_path / "clips" / "cam.mp4").write_bytes(clip)
    decoded = decoded_frames(clip)
    options = {"conf": 0.3, **({"tile": "true", "tile_size": 320} if tiled else {})}
    spec = {"source": "cam.mp4", "fps": 30, **options, **({"tile": True} if tiled else {})}
    with serving(_app(tmp_path)) as url, httpx.Client(base_url=url) as client:
        _ready(client)
        created = client.post("/streams", json=spec, headers=ADMIN)
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        messages = _sse(client, f"/streams/{stream_id}/events")
        frames = [m for kind, m in messages if kind == "frame"]
        assert len(frames) >= 15  # a file is never dropped; the first frames may precede the listener
        assert [f["frame"] for f in frames] == sorted(f["frame"] for f in frames)
        for message in frames[::4]:
            png = _png(decoded[message["frame"]])
            want = client.post("/detect", params=options, files={"image": ("f.png", png)}).json()
            if tiled:
                assert want["results"][0]["tiles"] >= 4  # really sliced
            want = want["results"][0]["detections"]
            assert want, "nothing to compare"
            assert [d["class_id"] for d in message["detections"]] == [d["class_id"] for d in want]
            for got, ref in zip(message["detections"], want, strict=True):
                assert got["box"] == pytest.approx(ref["box"], abs=0.02)
        assert messages[-1] == ("state", {"type": "state", "stream": stream_id, "state": "ended"})
        status = client.get(f"/streams/{stream_id}").json()
        assert status["state"] == "ended"
        assert status["frames"]["decoded"] == 20
        assert status["frames"]["processed"] == 20
        assert status["dropped"] == {}
        assert status["latency_ms"]["p50"] > 0


def _png(image) -> bytes:
    ok, data = cv2.imencode(".png", image[:, :, ::-1])
    assert ok
    return data.tobytes()


def test_admin_key_limits_and_bad_sources(tmp_path, clip):
    with serving(_app(tmp_path, max_streams=1)) as url, httpx.Client(base_url=url) as client:
        _ready(client)
        assert client.post("/streams", json={"source": "cam.mp4"}).status_code == 401
        assert (
            client.post(
                "/streams", json={"source": "cam.mp4"}, headers={"X-API-Key": "wrong-key-1"}
            ).status_code
            == 403
        )
        refused = client.post("/streams", json={"source": "../secret.mp4"}, headers=ADMIN)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "source_not_allowed")
        refused = client.post("/streams", json={"source": "rtsp://127.0.0.1/x"}, headers=ADMIN)
        assert refused.status_code == 403 and "private or reserved" in refused.json()["error"]["message"]
        refused = client.post("/streams", json={"source": "cam.mp4", "classes": ["dragon"]}, headers=ADMIN)
        assert refused.status_code == 422
        refused = client.post("/streams", json={"source": "cam.mp4", "lines": [
            {"name": "l", "start": [0, 0.5], "end": [1, 0.5]}]}, headers=ADMIN)  # fmt: skip
        assert refused.status_code == 422 and "track" in refused.text
        first = client.post("/streams", json={"source": "cam.mp4", "loop": True}, headers=ADMIN)
        assert first.status_code == 201
        second = client.post("/streams", json={"source": "cam.mp4"}, headers=ADMIN)
        assert (second.status_code, second.json()["error"]["code"]) == (409, "too_many_streams")
        stream_id = first.json()["id"]
        assert [s["id"] for s in client.get("/streams").json()["streams"]] == [stream_id]
        assert client.delete(f"/streams/{stream_id}").status_code == 401
        assert client.delete(f"/streams/{stream_id}", headers=ADMIN).status_code == 204
        assert client.get(f"/streams/{stream_id}").status_code == 404
        assert client.get("/streams").json()["streams"] == []


@pytest.mark.slow  # real time, real servers
def test_streams_are_kept_across_a_restart(tmp_path, clip):
    spec = {"source": "cam.mp4", "loop": True, "track": True, "name": "yard",
            "lines": [{"name": "door", "start": [0, 0.5], "end": [1, 0.5]}]}  # fmt: skip
    with serving(_app(tmp_path)) as url, httpx.Client(base_url=url) as client:
        _ready(client)
        stream_id = client.post("/streams", json=spec, headers=ADMIN).json()["id"]
    stored = json.loads((tmp_path / "state" / "streams.json").read_text())
    assert [s["id"] for s in stored["streams"]] == [stream_id]
    assert (tmp_path / "state" / "streams.json").stat().st_mode & 0o777 == 0o600
    with serving(_app(tmp_path)) as url, httpx.Client(base_url=url) as client:
        status = client.get(f"/streams/{stream_id}").json()
        assert (status["name"], status["source"]) == ("yard", str((tmp_path / "clips" / "cam.mp4").resolve()))
        give_up = time.monotonic() + 30
        while client.get(f"/streams/{stream_id}").json()["frames"]["processed"] < 3:
            assert time.monotonic() < give_up, client.get(f"/streams/{stream_id}").json()
            time.sleep(0.1)
        assert client.get(f"/streams/{stream_id}").json()["counts"]["lines"]["door"]["in"] >= 0


def crossing_frames(count: int = 30) -> list:
    """A red rectangle moving down across the middle of a 320x240 frame and a blue circle moving up:
    one crossing of a horizontal middle line each way (their bottom edges cross it once)."""
    import cv2
    import numpy as np

    frames = []
    for t in range(count):
        image = np.full((240, 320, 3), (90, 110, 130), np.uint8)
        top = 20 + 160 * t / (count - 1)
        cv2.rectangle(image, (60, int(top)), (105, int(top) + 40), (230, 60, 40), -1)
        cv2.circle(image, (230, int(210 - 180 * t / (count - 1))), 20, (40, 60, 230), -1)
        frames.append(image)
    return frames


@pytest.mark.slow  # real time, real servers
def test_lines_and_zones_are_counted_exactly_on_a_clip_with_known_crossings(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "crossing.mp4").write_bytes(make_clip(crossing_frames()))
    spec = {
        "source": "crossing.mp4", "fps": 30, "track": True,
        "lines": [{"name": "middle", "start": [0, 0.5], "end": [1, 0.5]}],
        "zones": [{"name": "lower", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]], "classes": ["circle"]}],
    }  # fmt: skip
    with serving(_app(tmp_path)) as url, httpx.Client(base_url=url) as client:
        _ready(client)
        stream_id = client.post("/streams", json=spec, headers=ADMIN).json()["id"]
        events = [
            m for kind, m in _sse(client, f"/streams/{stream_id}/events") if kind not in ("frame", "state")
        ]
        status = client.get(f"/streams/{stream_id}").json()
        metrics = client.get("/metrics").text
    assert status["state"] == "ended" and status["frames"]["processed"] == 30
    middle = status["counts"]["lines"]["middle"]
    assert (middle["in"], middle["out"]) == (1, 1)
    assert middle["by_class"] == {
        "1": {"in": 1, "out": 0},
        "0": {"in": 0, "out": 1},
    }  # rectangle down, circle up
    assert status["counts"]["zones"]["lower"] == {"inside": 0, "entered": 1, "exited": 1}  # circles only
    crossings = [(e["class_name"], e["direction"]) for e in events if e["type"] == "line.cross"]
    assert sorted(crossings) == [("circle", "out"), ("rectangle", "in")]
    exits = [e for e in events if e["type"] == "zone.exit"]
    assert [(e["class_name"], e["lost"]) for e in exits] == [("circle", False)]
    assert exits[0]["counts"]["zones"]["lower"]["exited"] == 1
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "stream"))): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.labels.get("stream") == stream_id
    }
    assert samples[("yolor_stream_line_crossings_total", (("direction", "in"), ("line", "middle")))] == 1
    assert samples[("yolor_stream_line_crossings_total", (("direction", "out"), ("line", "middle")))] == 1
    assert samples[("yolor_stream_zone_entries_total", (("zone", "lower"),))] == 1
    assert samples[("yolor_stream_zone_exits_total", (("zone", "lower"),))] == 1
    assert samples[("yolor_stream_zone_occupancy", (("zone", "lower"),))] == 0
    assert samples[("yolor_stream_frames_total", (("stage", "processed"),))] == 30
    assert samples[("yolor_stream_frames_total", (("stage", "decoded"),))] == 30
    assert samples[("yolor_stream_state", (("state", "ended"),))] == 1
    assert samples[("yolor_stream_state", (("state", "running"),))] == 0
    assert samples[("yolor_stream_dropped_frames_total", (("reason", "stale"),))] == 0
    assert samples[("yolor_stream_latency_seconds_count", ())] == 30


@pytest.mark.slow  # real time, real servers
def test_websocket_and_mjpeg_views(tmp_path, clip):
    import cv2
    import numpy as np
    from websockets.sync.client import connect

    decoded = decoded_frames(clip)
    app = _app(tmp_path, api_keys=["viewer-key-1"])
    with serving(app) as url, httpx.Client(base_url=url) as client:
        _ready(client)
        spec = {"source": "cam.mp4", "loop": True, "fps": 30}
        stream_id = client.post("/streams", json=spec, headers=ADMIN).json()["id"]
        ws_url = url.replace("http://", "ws://") + f"/streams/{stream_id}/ws"
        with connect(f"{ws_url}?types=frame&api_key=viewer-key-1") as socket:
            messages = [json.loads(socket.recv(timeout=10)) for _ in range(5)]
        assert {m["type"] for m in messages} == {"frame"}
        frames = [m["frame"] for m in messages]
        assert frames == sorted(frames) and len(set(frames)) == 5
        for bad, code in ((f"{ws_url}", 1008), (f"{ws_url}?api_key=nope-nope-1", 1008)):
            with connect(bad) as socket, pytest.raises(Exception) as closed:
                socket.recv(timeout=10)
            assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == code
        gone = url.replace("http://", "ws://") + "/streams/nope/ws?api_key=viewer-key-1"
        with connect(gone) as socket, pytest.raises(Exception) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 4404
        assert client.get(f"/streams/{stream_id}/mjpeg").status_code == 401
        parts = []
        with client.stream(
            "GET", f"/streams/{stream_id}/mjpeg", params={"api_key": "viewer-key-1"}
        ) as response:
            assert response.headers["content-type"].startswith("multipart/x-mixed-replace")
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                while (end := data.find(b"\xff\xd9")) >= 0 and len(parts) < 3:
                    start = data.find(b"\xff\xd8")
                    parts.append(data[start : end + 2])
                    data = data[end + 2 :]
                if len(parts) >= 3:
                    break
        for jpeg in parts:
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            assert image.shape == decoded[0].shape
            diffs = [np.abs(image.astype(int) - f.astype(int)) for f in decoded]
            nearest = min(diffs, key=lambda d: float(np.median(d)))
            assert np.median(nearest) <= 10  # one of the clip's frames (through a JPEG at quality 80) ...
            assert (nearest.max(axis=2) > 120).mean() > 0.002  # ... with its boxes drawn on it


@pytest.mark.slow  # real time, real servers
def test_eight_cameras_at_once_and_a_slow_webhook_never_slows_detection(tmp_path, clip):
    """Eight MJPEG cameras at 10 fps (5 processed each), and a clip whose every crossing goes to a
    webhook that answers nothing until the clip has ended: the clip is detected to its end regardless,
    the cameras keep their pace, nothing is dropped, and delivery goes on once the receiver answers."""
    from bench.cameras import MjpegCamera, jpegs
    from tests.service.streams.test_webhook import receiver

    (tmp_path / "clips" / "crossing.mp4").write_bytes(make_clip(crossing_frames()))
    frames = jpegs(sample_frames(4))
    cameras = [MjpegCamera(frames, fps=10) for _ in range(8)]
    for camera in cameras:
        camera.start()
    try:
        with (
            receiver() as (hook, received),
            serving(_app(tmp_path, stream_allowed_hosts=["127.0.0.1"])) as url,
        ):
            received.gate.clear()
            client = httpx.Client(base_url=url)
            _ready(client)
            ids = [
                client.post("/streams", json={"source": c.url, "fps": 5}, headers=ADMIN).json()["id"]
                for c in cameras
            ]
            spec = {
                "source": "crossing.mp4", "fps": 30, "track": True,
                "lines": [{"name": "middle", "start": [0, 0.5], "end": [1, 0.5]}],
                "zones": [{"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
                "webhook": {"url": hook, "secret": "0123456789abcdef"},
            }  # fmt: skip
            clip_id = client.post("/streams", json=spec, headers=ADMIN).json()["id"]
            give_up = time.monotonic() + 30
            while client.get(f"/streams/{clip_id}").json()["state"] != "ended":
                assert time.monotonic() < give_up
                time.sleep(0.1)
            answered_before_the_end = len(received.received)
            received.gate.set()
            before = [client.get(f"/streams/{i}").json() for i in ids]
            time.sleep(2)
            statuses = [client.get(f"/streams/{i}").json() for i in ids]
            ended = client.get(f"/streams/{clip_id}").json()
            client.close()
    finally:
        for camera in cameras:
            camera.stop()
    assert ended["frames"]["processed"] == 30 and ended["dropped"] == {}
    assert (ended["counts"]["lines"]["middle"]["in"], ended["counts"]["lines"]["middle"]["out"]) == (1, 1)
    assert answered_before_the_end == 0  # detection never waited for the receiver ...
    assert ended["webhook"]["sent"] + len(received.received) >= 1  # ... and delivery goes on, at its own pace
    for first, status in zip(before, statuses, strict=True):
        assert status["state"] == "running", status
        processed = status["frames"]["processed"] - first["frames"]["processed"]
        assert processed >= 8, status  # 5 per second asked, over 2 s
        assert status["dropped"].get("overloaded", 0) == 0 and status["dropped"].get("failed", 0) == 0


@pytest.mark.slow  # real time, real servers
def test_sigterm_ends_the_listeners_and_the_server_exits_promptly(tmp_path, clip):
    """`yolor serve` with a stream and an SSE listener and an MJPEG watcher: SIGTERM ends both
    responses at once, closes the stream, and the process exits well before uvicorn's graceful
    timeout (request timeout + 5 s) would have let it."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from bench.server import free_port
    from tests.support.processes import wait_until_ok

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOR_")}
    env |= {"YOLOR_STREAM_ROOT": str(tmp_path / "clips"), "YOLOR_ADMIN_KEYS": ADMIN["X-API-Key"]}
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
    with log.open("wb") as out:
        root = Path(__file__).resolve().parents[3]
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ok(f"{url}/readyz", process, log, timeout_s=60)
        spec = {"source": "cam.mp4", "loop": True}
        stream_id = httpx.post(f"{url}/streams", json=spec, headers=ADMIN).json()["id"]
        ended: dict[str, float] = {}

        def read(path: str) -> None:
            with httpx.stream("GET", f"{url}{path}", timeout=60) as response:
                for _ in response.iter_bytes():
                    pass
            ended[path] = time.monotonic()

        readers = [
            threading.Thread(target=read, args=(f"/streams/{stream_id}/{p}",)) for p in ("events", "mjpeg")
        ]
        for reader in readers:
            reader.start()
        time.sleep(2)  # both listening, frames flowing
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        exited = time.monotonic() - sent
        for reader in readers:
            reader.join(5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert exited < 10, log.read_text()  # not the 35 s of uvicorn's graceful timeout
    assert set(ended) == {f"/streams/{stream_id}/events", f"/streams/{stream_id}/mjpeg"}
    assert all(t - sent < 5 for t in ended.values())
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_a_stream_runs_on_the_model_and_version_it_names(tmp_path, clip):
    """With a model repository (tests.support.repository: the score says which model ran)."""
    root = repository(tmp_path / "models", all_versions=True)
    app = repository_app(
        root, stream_root=tmp_path / "clips", state_dir=tmp_path / "state", admin_keys=[ADMIN["X-API-Key"]]
    )
    with serving(app) as url, httpx.Client(base_url=url) as client:
        _ready(client)
        refused = client.post("/streams", json={"source": "cam.mp4", "model": "nope"}, headers=ADMIN)
        assert (refused.status_code, refused.json()["error"]["code"]) == (404, "unknown_model")
        for choice, size in [({"model": "small", "version": 1}, 64), ({}, 128)]:  # {}: the default, big
            created = client.post("/streams", json={"source": "cam.mp4", "fps": 30, **choice}, headers=ADMIN)
            assert created.status_code == 201, created.text
            frames = [
                m for kind, m in _sse(client, f"/streams/{created.json()['id']}/events") if kind == "frame"
            ]
            assert len(frames) >= 15
            scores = [d["score"] for f in frames for d in f["detections"]]
            assert len(scores) == len(frames) and scores == pytest.approx([score(size)] * len(scores))
