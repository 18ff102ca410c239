"""The page at `/`: GET /model/sample, and the page itself in a real browser.

The browser tests run Debian's `chromium` (`make system-tools` installs it) through Playwright for
Python against the real server (uvicorn in a subprocess, ONNX Runtime on CPU, warm-up on). Without
chromium they fail; `SKIP_BROWSER_TESTS=1` skips them. `PAGE_SCREENSHOT=docs/page.png` also
writes the screenshot of the demo sample's result there (the picture in the README and docs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.server import free_port
from service.settings import DEMO_MODEL_DIR
from tests.support.app import assert_error, fake_app, running, topk_rows
from tests.support.processes import started_process, wait_until_ok

ROOT = Path(__file__).resolve().parents[3]
SKIP_VARIABLE, SCREENSHOT_VARIABLE = "SKIP_BROWSER_TESTS", "PAGE_SCREENSHOT"
KEY = "page-test-key-0"
ROWS = [[2, 2, 12, 12, 0.9, 0]]
START_S = 90.0  # model load + warm-up of every batch size, on a slow CI machine
WAIT_MS = 20_000  # the longest the browser waits for anything
FACTS = ["arch", "input_size", "backend", "precision", "device", "max_batch_size"]
STAGES = ["total", "preprocess", "queue", "inference", "postprocess"]


# ---- GET /model/sample through the app (no browser) ----------------------------------------------


@pytest.mark.api
@pytest.mark.anyio
async def test_model_sample_is_served_when_the_model_has_one(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(ROWS))
    async with running(app) as client:
        without = await client.get("/model")
        missing = await client.get("/model/sample")
        shutil.copy(DEMO_MODEL_DIR / "sample.jpg", tmp_path / "sample.jpg")
        with_sample = await client.get("/model")
        sample = await client.get("/model/sample")
        metrics = (await client.get("/metrics")).text
    assert without.json()["sample_image"] is None
    assert "no sample image" in assert_error(missing, 404, "not_found")
    assert with_sample.json()["sample_image"] == "/model/sample"
    assert sample.status_code == 200 and sample.headers["content-type"] == "image/jpeg"
    assert sample.content == (DEMO_MODEL_DIR / "sample.jpg").read_bytes()
    assert 'yolor_requests_total{route="/model/sample",status="404"}' in metrics


@pytest.mark.api
@pytest.mark.anyio
async def test_model_sample_needs_the_api_key_like_model(tmp_path):
    shutil.copy(DEMO_MODEL_DIR / "sample.jpg", tmp_path / "sample.jpg")
    app, _ = fake_app(tmp_path, topk_rows(ROWS), api_keys=[KEY])
    async with running(app) as client:
        anonymous = await client.get("/model/sample")
        wrong = await client.get("/model/sample", headers={"X-API-Key": "wrong-key-0"})
        right = await client.get("/model/sample", headers={"X-API-Key": KEY})
        spec = (await client.get("/openapi.json")).json()
    assert_error(anonymous, 401, "unauthorized")
    assert_error(wrong, 403, "forbidden")
    assert right.status_code == 200 and right.headers["content-type"] == "image/jpeg"
    sample_route = spec["paths"]["/model/sample"]["get"]
    assert "image/jpeg" in sample_route["responses"]["200"]["content"]
    assert {"401", "403", "404"} <= set(sample_route["responses"])
    assert "sample_image" in spec["components"]["schemas"]["ModelInfo"]["properties"]


@pytest.mark.unit
def test_the_page_puts_server_strings_in_as_text_only():
    html = (ROOT / "service" / "http" / "web" / "index.html").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in html, sink
    assert "textContent" in html and 'aria-label="image or video file"' in html


# ---- the page in chromium --------------------------------------------------------------------------


def chromium() -> str:
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: browser tests skipped")
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(f"no chromium on PATH: run `make system-tools` (or set {SKIP_VARIABLE}=1 to skip)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: `make install` (or set {SKIP_VARIABLE}=1 to skip)")
    # the system chromium, never a downloaded one (`playwright install` is not needed)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def server(model_dir: Path, log_path: Path, **settings: str) -> Iterator[str]:
    """`uvicorn --factory service.http.app:app_factory` on 127.0.0.1 for `model_dir`; its URL when ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOR_")}
    env.update(
        YOLOR_MODEL_DIR=str(model_dir),
        YOLOR_BACKEND="onnxruntime",
        YOLOR_DEVICE="cpu",
        YOLOR_WARMUP="true",
        YOLOR_ONNX_INTRA_OP_THREADS="2",
        **{f"YOLOR_{k.upper()}": v for k, v in settings.items()},
    )
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.http.app:app_factory"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with started_process(command, log_path, cwd=ROOT, env=env) as process:
        wait_until_ok(f"{url}/readyz", process, log_path, timeout_s=START_S)
        yield url


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory) -> Iterator[str]:
    with server(DEMO_MODEL_DIR, tmp_path_factory.mktemp("demo-server") / "server.log") as url:
        yield url


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A page at `url`/ whose script errors (uncaught exceptions, console errors) end up in the list."""
    page = browser.new_page(viewport={"width": 1100, "height": 820}, device_scale_factor=1)
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))

    def console(message: Any) -> None:
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            errors.append(f"console: {message.text} ({message.location.get('url')})")

    page.on("console", console)
    page.goto(f"{url}/")
    return page, errors


def expect_facts(page: Any, info: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    for name in FACTS:
        expect(page.locator(f'[data-fact="{name}"]')).to_have_text(str(info[name]))
    expect(page.locator('[data-fact="nc"]')).to_have_text(str(len(info["class_names"])))
    expect(page.locator('[data-fact="class_names"]')).to_have_text(", ".join(info["class_names"]))


def expect_result(page: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Boxes drawn, one table row per detection, the timing shown: all as the response says."""
    from playwright.sync_api import expect

    result = body["results"][0]
    detections = result["detections"]
    # this response's timing is on the page (formatted as the page does): it has been drawn
    page.wait_for_function(
        "ms => Object.entries(ms).every(([stage, v]) =>"
        ' document.querySelector(`[data-stage="${stage}"]`).textContent === `${v.toFixed(1)} ms`)',
        arg={stage: body["timing_ms"][stage] for stage in STAGES},
    )
    expect(page.locator("#boxes g.box")).to_have_count(len(detections))
    expect(page.locator("#table tbody tr")).to_have_count(len(detections))
    expect(page.locator("#view")).to_be_visible()
    names = page.locator("#table tbody tr td:first-child").all_inner_texts()
    assert [n.strip() for n in names] == [d["class_name"] for d in detections]
    drawn = page.locator("#boxes g.box").evaluate_all(
        "gs => gs.map(g => { const r = g.querySelector('rect.frame');"
        " return [g.dataset.className, ...['x', 'y', 'width', 'height'].map(a => +r.getAttribute(a))]; })"
    )
    for (name, x, y, w, h), d in zip(drawn, detections, strict=True):
        x1, y1, x2, y2 = d["box"]
        assert name == d["class_name"]
        assert (x, y, w, h) == pytest.approx((x1, y1, x2 - x1, y2 - y1), abs=1e-6)
    assert page.locator("#canvas").evaluate("c => [c.width, c.height]") == [result["width"], result["height"]]
    expect(page.locator("#timing")).to_be_visible()
    for stage in STAGES:
        text = page.locator(f'[data-stage="{stage}"]').inner_text()
        value, unit = text.split()
        assert unit == "ms" and float(value) == pytest.approx(body["timing_ms"][stage], abs=0.051), stage
    return detections


def save_small_png(source: Path, target: Path) -> None:
    """`source` as a 256-colour PNG (about a third of the size; the README's picture stays small)."""
    from PIL import Image  # Pillow comes with scikit-image (the dev extra)

    with Image.open(source) as image:
        palette = image.convert("RGB").quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    palette.save(target, optimize=True)


@pytest.mark.api
@pytest.mark.slow
def test_page_shows_the_model_and_detects_the_sample(browser, demo_server, tmp_path):
    from playwright.sync_api import expect

    info = httpx.get(f"{demo_server}/model").json()
    truth = json.loads((DEMO_MODEL_DIR / "sample.json").read_text(encoding="utf-8"))
    page, errors = open_page(browser, demo_server)
    expect_facts(page, info)
    sample = page.get_by_role("button", name="Try a sample")
    expect(sample).to_be_visible()
    expect(page.locator("#table")).to_be_hidden()
    with page.expect_response(lambda r: r.request.method == "POST" and "/detect" in r.url) as answer:
        sample.click()
    assert answer.value.status == 200
    detections = expect_result(page, answer.value.json())
    assert len(detections) == len(truth["objects"])  # every shape (tests/train/test_demo_sample.py)
    expect(page.locator("#status")).to_contain_text(f"{len(detections)} detections")
    with page.expect_response(lambda r: r.request.method == "POST" and "/detect" in r.url) as again:
        sample.click()  # a second go replaces the first result (and shows warm timings)
    assert expect_result(page, again.value.json()) == detections
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    if target := os.environ.get(SCREENSHOT_VARIABLE):
        save_small_png(tmp_path / "page.png", ROOT / target)
    assert not errors, errors


@pytest.mark.api
@pytest.mark.slow
def test_without_a_sample_the_button_is_hidden_and_the_key_is_sent(browser, tmp_path):
    """A model without sample.jpg behind an API key: the page asks for the key, then shows the model
    without the sample button, and a file the user picks is detected with the key sent."""
    from playwright.sync_api import expect

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.json", "model.onnx"):
        shutil.copy(DEMO_MODEL_DIR / name, model_dir / name)
    photo = tmp_path / "own.jpg"  # the sample enlarged past the input size, so that slicing has windows
    import cv2

    sample = cv2.imread(str(DEMO_MODEL_DIR / "sample.jpg"))
    cv2.imwrite(str(photo), cv2.resize(sample, None, fx=2.5, fy=2.5, interpolation=cv2.INTER_LINEAR))
    with server(model_dir, tmp_path / "server.log", api_keys=KEY) as url:
        info = httpx.get(f"{url}/model", headers={"X-API-Key": KEY}).json()
        assert info["sample_image"] is None
        page, errors = open_page(browser, url)
        expect(page.locator("#modelStatus")).to_contain_text("401")
        expect(page.locator("#facts")).to_be_hidden()
        page.get_by_label("API key").fill(KEY)
        page.get_by_label("API key").press("Enter")  # `change` fires; the page asks /model again
        page.get_by_label("API key").blur()
        expect_facts(page, info)
        expect(page.get_by_role("button", name="Try a sample")).to_be_hidden()
        with page.expect_response(lambda r: r.request.method == "POST" and "/detect" in r.url) as answer:
            page.locator("#file").set_input_files(str(photo))
        assert answer.value.status == 200
        assert answer.value.request.headers.get("x-api-key") == KEY
        assert expect_result(page, answer.value.json())
        assert "tile=false" in answer.value.url
        with page.expect_response(lambda r: r.request.method == "POST" and "/detect" in r.url) as sliced:
            page.get_by_label("sliced inference").select_option("true")  # the same image again, sliced
        assert "tile=true" in sliced.value.url
        tiles = sliced.value.json()["results"][0]["tiles"]
        assert tiles > 1
        expect(page.locator("#status")).to_contain_text(f"sliced into {tiles} windows")
        assert expect_result(page, sliced.value.json())
    assert not [e for e in errors if "401" not in e], (
        errors
    )  # the first GET /model is refused, as it should be


@pytest.mark.api
@pytest.mark.slow
def test_server_strings_are_shown_as_text_and_many_classes_fold(browser, demo_server):
    """Whatever /model says is text on the page, never markup; 80 class names fold into a <details>."""
    from playwright.sync_api import expect

    info = httpx.get(f"{demo_server}/model").json()
    markup = '<img src="x" onerror="window.injected = 1">'
    names = [markup, *(f"class{i}" for i in range(79))]
    fake = {
        **info,
        "arch": markup,
        "device": "<b>cpu</b>",
        "class_names": names,
        "nc": 80,
        "sample_image": None,
    }
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.route("**/model", lambda route: route.fulfill(json=fake))
    page.goto(f"{demo_server}/")
    expect(page.locator('[data-fact="arch"]')).to_have_text(markup)
    expect(page.locator('[data-fact="device"]')).to_have_text("<b>cpu</b>")
    expect(page.locator('[data-fact="nc"]')).to_have_text("80")
    folded = page.locator('[data-fact="class_names"] details')
    expect(folded.locator("summary")).to_contain_text("(all 80)")
    assert folded.evaluate("d => d.open") is False
    folded.locator("summary").click()
    expect(folded).to_contain_text("class78")
    assert page.locator("#model img, #model b").count() == 0
    assert page.evaluate("window.injected") is None
    expect(page.get_by_role("button", name="Try a sample")).to_be_hidden()


@pytest.mark.api
@pytest.mark.slow
def test_a_video_plays_with_the_boxes_of_the_frame_shown(browser, demo_server, tmp_path):
    """A WebM clip of the sample's shapes: the page posts it to /detect/video with tracking, reads the
    NDJSON as it comes, and draws over the video the boxes of the result at the frame on screen,
    labelled with their track ids (checked after seeking to two times against the streamed lines)."""
    from playwright.sync_api import expect

    from tests.support.video import make_clip, sample_frames

    clip = tmp_path / "clip.webm"
    clip.write_bytes(make_clip(sample_frames(), fmt="webm", codec="libvpx-vp9"))
    page, errors = open_page(browser, demo_server)
    with page.expect_response(lambda r: r.request.method == "POST" and "/detect/video" in r.url) as answer:
        page.locator("#file").set_input_files(str(clip))
    assert "track=true" in answer.value.url
    lines = [json.loads(line) for line in answer.value.text().splitlines()]
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert len(frames) == summary["frames_processed"] == 12
    expect(page.locator("#status")).to_contain_text("12 of 12 frames detected in 192×256 (vp9")
    expect(page.locator("#video")).to_be_visible()
    expect(page.locator("#canvas")).to_be_hidden()
    for index in (3, 9):
        frame = frames[index]
        page.locator("#video").evaluate("(v, t) => { v.currentTime = t; }", frame["pts_s"] + 0.01)
        page.wait_for_function("t => Math.abs(document.getElementById('video').currentTime - t) < 0.02",
                               arg=frame["pts_s"] + 0.01)  # fmt: skip
        expect(page.locator("#boxes g.box")).to_have_count(len(frame["detections"]))
        drawn = page.locator("#boxes g.box rect.frame").evaluate_all(
            "rs => rs.map(r => ['x', 'y', 'width', 'height'].map(a => +r.getAttribute(a)))"
        )
        for (x, y, w, h), d in zip(drawn, frame["detections"], strict=True):
            x1, y1, x2, y2 = d["box"]
            assert (x, y, w, h) == pytest.approx((x1, y1, x2 - x1, y2 - y1), abs=1e-6)
        labels = page.locator("#boxes g.box").evaluate_all(
            "gs => gs.map(g => [g.dataset.trackId ?? null, g.querySelector('text').textContent])"
        )
        for (track_id, text), d in zip(labels, frame["detections"], strict=True):
            want = None if d["track_id"] is None else str(d["track_id"])
            assert track_id == want and text.startswith(f"#{want} " if want else d["class_name"])
        assert any(d["track_id"] is not None for d in frame["detections"])
        expect(page.locator("#table tbody tr")).to_have_count(len(frame["detections"]))
    assert not errors, errors


@pytest.mark.api
@pytest.mark.slow
def test_a_live_stream_is_listed_and_shown_with_its_boxes(browser, tmp_path):
    """A stream (a clip looping under YOLOR_STREAM_ROOT) appears on the page; choosing it shows its
    annotated MJPEG view and its state, frames/s and counts."""
    from playwright.sync_api import expect

    from tests.support.video import make_clip, sample_frames

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "cam.mp4").write_bytes(make_clip(sample_frames(20)))
    admin = "stream-admin-key"
    settings = {"stream_root": str(tmp_path / "clips"), "admin_keys": admin}
    with server(DEMO_MODEL_DIR, tmp_path / "server.log", **settings) as url:
        spec = {"source": "cam.mp4", "loop": True, "name": "yard", "track": True,
                "lines": [{"name": "door", "start": [0, 0.5], "end": [1, 0.5]}]}  # fmt: skip
        created = httpx.post(f"{url}/streams", json=spec, headers={"X-API-Key": admin})
        assert created.status_code == 201, created.text
        page, errors = open_page(browser, url)
        button = page.get_by_role("button", name=re.compile("^yard: running"))
        expect(button).to_be_visible()
        button.click()
        expect(button).to_have_attribute("aria-pressed", "true")
        page.wait_for_function("() => document.getElementById('streamImage').naturalWidth > 0")
        size = page.locator("#streamImage").evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert size == [192, 256]  # the clip's frames
        expect(page.locator("#streamStatus")).to_contain_text("running")
        expect(page.locator("#streamStatus")).to_contain_text("door: ")
        assert (
            httpx.delete(f"{url}/streams/{created.json()['id']}", headers={"X-API-Key": admin}).status_code
            == 204
        )
        expect(page.locator("#streams")).to_be_hidden()  # gone from the list at the next poll
    assert not errors, errors
