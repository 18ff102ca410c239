"""`yolor predict` on the demo model: in this process and over HTTP against a real server, each image's
detections equal POST /detect's, a clip gives one line per processed frame and a summary, an
undecodable file is reported and skipped (exit status 1), a 503's Retry-After is honoured, and
--resume runs only what predictions.jsonl does not have complete."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cli import main
from predict.engine import ItemError, Record
from predict.run import RunOptions, run
from predict.sources import expand
from service.http.app import create_app
from service.settings import DEMO_MODEL_DIR, Settings
from tests.support.app import encode, serving, wait_for
from tests.support.video import make_clip

av = pytest.importorskip("av")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("YOLOR_ONNX_INTRA_OP_THREADS", "1")
    monkeypatch.setenv("YOLOR_ONNX_PARALLEL_RUNS", "1")


def _demo_app():
    return create_app(
        Settings(model_dir=DEMO_MODEL_DIR, backend="onnxruntime", device="cpu", onnx_intra_op_threads=1,
                 onnx_parallel_runs=1)
    )  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """sample.jpg, its mirror image as a PNG, and a 12-frame clip of the sample's shapes."""
    root = tmp_path_factory.mktemp("inputs")
    sample = (DEMO_MODEL_DIR / "sample.jpg").read_bytes()
    (root / "sample.jpg").write_bytes(sample)
    import cv2

    bgr = cv2.imdecode(np.frombuffer(sample, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    (root / "more").mkdir()
    (root / "more" / "mirror.png").write_bytes(encode(np.ascontiguousarray(rgb[:, ::-1])))
    (root / "clip.mp4").write_bytes(make_clip())
    return root


@pytest.fixture(scope="module")
def server():
    with serving(_demo_app()) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "the demo server never became ready")
        yield url


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Detections equal to the rounding (batches of other sizes may change the last float bits)."""
    assert [d["class_name"] for d in got] == [d["class_name"] for d in want]
    for g, w in zip(got, want, strict=True):
        assert g["box"] == pytest.approx(w["box"], abs=0.02)
        assert g["score"] == pytest.approx(w["score"], abs=1e-4)
        assert g["class_id"] == w["class_id"]


def _predict(inputs: Path, out: Path, *where: str, extra: tuple[str, ...] = ()) -> int:
    sources = [str(inputs / "sample.jpg"), str(inputs / "more"), str(inputs / "clip.mp4")]
    return main(["predict", *sources, *where, "--out", str(out), "--vid-stride", "3", "-q", *extra])


LOCAL = ("--model", str(DEMO_MODEL_DIR), "--backend", "onnxruntime", "--device", "cpu")


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    extra = ("--format", "coco,yolo,labelstudio", "--save-annotated", "--conf", "0.3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLOR_ONNX_INTRA_OP_THREADS", "1")
        assert _predict(inputs, out, *LOCAL, extra=extra) == 0
    return out


def test_in_process_images_equal_post_detect(local_run, inputs, server):
    lines = _lines(local_run)
    images = [line for line in lines if "frame" not in line and "summary" not in line]
    assert [Path(line["source"]).name for line in images] == ["sample.jpg", "mirror.png"]
    assert sum(len(line["detections"]) for line in images) >= 2  # the sample's shapes are found
    for line in images:
        blob = Path(line["source"]).read_bytes()
        answer = httpx.post(
            f"{server}/detect", params={"conf": 0.3}, files={"images": ("i", blob)}, timeout=30
        )
        want = answer.json()["results"][0]
        assert (line["width"], line["height"]) == (want["width"], want["height"])
        _assert_same(line["detections"], want["detections"])


def test_a_clip_gives_a_line_per_processed_frame_then_its_summary(local_run, inputs):
    clip = [line for line in _lines(local_run) if line["source"] == str(inputs / "clip.mp4")]
    assert [line.get("frame") for line in clip] == [0, 3, 6, 9, None]
    summary = clip[-1]["summary"]
    assert (summary["frames_read"], summary["frames_processed"]) == (12, 4)
    assert all((line["width"], line["height"]) == (192, 256) for line in clip[:-1])


def test_the_formats_and_annotated_images_are_written(local_run, inputs):
    coco = json.loads((local_run / "coco.json").read_text())
    assert len(coco["images"]) == 2 + 4 and [c["name"] for c in coco["categories"]][:1]
    assert (local_run / "labels" / "sample.txt").exists() and (
        local_run / "labels" / "more" / "mirror.txt"
    ).exists()
    assert sorted(p.name for p in (local_run / "labels" / "clip").iterdir()) == [
        f"{i:06d}.txt" for i in (0, 3, 6, 9)
    ]
    assert len(json.loads((local_run / "labelstudio.json").read_text())) == 2
    assert (local_run / "annotated" / "sample.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert (local_run / "annotated" / "more" / "mirror.jpg").exists()
    import av

    with av.open(str(local_run / "annotated" / "clip.mp4")) as container:  # the 4 processed frames, drawn
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (256, 192, 3)
    from tests.support.video import decoded_frames

    source = decoded_frames((inputs / "clip.mp4").read_bytes())[0]
    drawn = (np.abs(frames[0].astype(int) - source).sum(axis=2) > 150).sum()  # box lines, not codec loss
    assert drawn > 100, drawn
    assert (local_run / "errors.jsonl").read_text() == ""


def test_over_http_equals_in_process(local_run, inputs, server, tmp_path):
    assert _predict(inputs, tmp_path, "--url", server, extra=("--conf", "0.3")) == 0
    got, want = _lines(tmp_path), _lines(local_run)
    assert [(g["source"], g.get("frame")) for g in got] == [(w["source"], w.get("frame")) for w in want]
    for g, w in zip(got, want, strict=True):
        if "summary" in w:
            assert g["summary"]["frames_processed"] == w["summary"]["frames_processed"]
        else:
            assert (g["width"], g["height"]) == (w["width"], w["height"])
            _assert_same(g["detections"], w["detections"])


def test_an_undecodable_file_is_reported_and_skipped(inputs, tmp_path, caplog):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    argv = [
        "predict",
        str(bad),
        str(inputs / "sample.jpg"),
        str(tmp_path / "gone.png"),
        *LOCAL,
        "--out",
        str(out),
    ]
    assert main([*argv, "-q"]) == 1
    assert [Path(line["source"]).name for line in _lines(out)] == ["sample.jpg"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {(Path(e["source"]).name, e["error"]["code"]) for e in errors} == {
        ("broken.jpg", "invalid_image"), ("gone.png", "not_found")
    }  # fmt: skip
    assert any("broken.jpg: invalid_image" in r.getMessage() for r in caplog.records)


def test_no_sources_or_both_engines_is_bad_usage(tmp_path):
    assert main(["predict", str(tmp_path / "nothing"), "--url", "http://x", "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "a.jpg", "--url", "http://x", "--model", ".", "--out", str(tmp_path)])
    assert exit_info.value.code == 2


class _BusyOnce:
    """The demo app behind a stub that answers the first POST /detect with 503, Retry-After: 1."""

    def __init__(self, app: Any) -> None:
        self.app, self.refused, self.posts = app, False, 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/detect":
            self.posts += 1
            if not self.refused:
                self.refused = True
                headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                body = b'{"error": {"code": "overloaded", "message": "busy"}}'
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@pytest.mark.slow
def test_a_503_is_retried_after_its_retry_after(inputs, tmp_path):
    stub = _BusyOnce(_demo_app())
    with serving(stub) as url:  # type: ignore[arg-type]
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "the demo server never became ready")
        started = time.monotonic()
        argv = ["predict", str(inputs / "sample.jpg"), "--url", url, "--out", str(tmp_path), "-q"]
        assert main(argv) == 0
        assert time.monotonic() - started >= 1.0
    assert stub.posts == 2
    assert len(_lines(tmp_path)) == 1


class _CountingEngine:
    """A fixed answer per image; a clip of three frames; counts what it is asked."""

    model_version = "fake"
    max_batch = 2

    def __init__(self) -> None:
        self.class_names = ["thing"]
        self.images = 0
        self.videos: list[Path] = []

    async def image(self, data: bytes) -> Record:
        self.images += 1
        if data == b"bad":
            raise ItemError("invalid_image", "not an image")
        return {"width": 4, "height": 2, "detections": []}

    async def video(self, path: Path, stride: int, track: bool = False) -> AsyncIterator[Record]:
        self.videos.append(path)
        for i in range(0, 3, stride):
            yield {"frame": i, "pts_s": i / 10, "width": 4, "height": 2, "detections": []}
        yield {"summary": {"frames_read": 3}}

    async def close(self) -> None:
        pass


def test_resume_skips_what_is_complete_and_redoes_a_clip_without_its_summary(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg", "v.mp4"):
        (tmp_path / name).write_bytes(b"image")
    sources, _ = expand(["a.jpg", "v.mp4", "b.jpg", "c.jpg"], base=tmp_path)
    out = tmp_path / "out"
    first = _CountingEngine()
    asyncio.run(run(sources, first, RunOptions(out, concurrency=2, formats=("coco",))))
    lines = _lines(out)
    assert len(lines) == 3 + 3 + 1 and first.images == 3
    # as if stopped inside the clip: c.jpg never written, the clip's summary missing
    kept = [line for line in lines if "summary" not in line and not line["source"].endswith("c.jpg")]
    (out / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in kept))
    again = _CountingEngine()
    summary = asyncio.run(run(sources, again, RunOptions(out, resume=True, concurrency=2, formats=("coco",))))
    assert (again.images, again.videos, summary.resumed, summary.done) == (1, [tmp_path / "v.mp4"], 2, 2)
    assert sorted(
        (line["source"], line.get("frame", -1), "summary" in line) for line in _lines(out)
    ) == sorted((line["source"], line.get("frame", -1), "summary" in line) for line in lines)
    assert len(json.loads((out / "coco.json").read_text())["images"]) == 3 + 3


def test_a_failed_image_is_skipped_and_the_order_kept(tmp_path):
    for name, data in (("a.jpg", b"image"), ("b.jpg", b"bad"), ("c.jpg", b"image")):
        (tmp_path / name).write_bytes(data)
    sources, _ = expand([str(tmp_path)])
    summary = asyncio.run(run(sources, _CountingEngine(), RunOptions(tmp_path / "out", concurrency=3)))
    assert (summary.done, summary.failed) == (2, 1)
    assert [Path(line["source"]).name for line in _lines(tmp_path / "out")] == ["a.jpg", "c.jpg"]


def test_track_gives_the_servers_track_ids(inputs, server, tmp_path):
    """--track in-process and over HTTP: the same track ids for the same clip, frame by frame, and
    the summary's tracks; without --track no line has a track_id."""
    clip = [str(inputs / "clip.mp4")]
    local, remote = tmp_path / "local", tmp_path / "remote"
    common = ("--out", "--vid-stride", "1", "-q", "--track", "--conf", "0.3")
    assert main(["predict", *clip, *LOCAL, common[0], str(local), *common[1:]]) == 0
    assert main(["predict", *clip, "--url", server, common[0], str(remote), *common[1:]]) == 0
    got, want = _lines(local), _lines(remote)
    assert len(got) == len(want) == 13
    for g, w in zip(got[:-1], want[:-1], strict=True):
        assert [d["track_id"] for d in g["detections"]] == [d["track_id"] for d in w["detections"]]
    assert any(d["track_id"] is not None for line in got[:-1] for d in line["detections"])
    assert got[-1]["summary"]["tracks"] == want[-1]["summary"]["tracks"] != []
