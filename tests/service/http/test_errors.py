"""Every failure answers `{"error": {"code", "message", "request_id"}}` with the right status, and
the server lives on."""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import logging
import struct
import zlib

import numpy as np
import pytest

from tests.support.app import (
    Gate,
    assert_error,
    encode,
    fake_app,
    files,
    running,
    solid,
    topk_rows,
    wait_until,
)

pytestmark = [pytest.mark.api, pytest.mark.anyio]

OK_ROWS = [[2, 2, 12, 12, 0.9, 0]]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data (a decompression-bomb stand-in)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


IMAGE = encode(solid(64, 64, (9, 9, 9)))
MULTIPART, JSON = "multipart/form-data; boundary=B", "application/json"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"params": {"conf": 1.5}}, 422, "invalid_request"),
        ({"params": {"iou": -0.1}}, 422, "invalid_request"),
        ({"params": {"max_det": 0}}, 422, "invalid_request"),
        ({"params": {"agnostic": "maybe"}}, 422, "invalid_request"),
        ({"params": {"classes": "cat"}}, 422, "invalid_parameter"),
        ({"params": {"classes": "3"}}, 422, "invalid_parameter"),
        ({"files": files(b"definitely not an image")}, 415, "invalid_image"),
        ({"files": files(b"")}, 415, "invalid_image"),
        ({"files": files(IMAGE[: len(IMAGE) // 3])}, 415, "invalid_image"),  # truncated PNG
        ({"files": files(png_header(100_000, 100_000))}, 413, "too_many_pixels"),  # refused from the header
        ({"files": files(*[IMAGE] * 5)}, 413, "too_many_images"),
        ({"data": {"note": "no files"}, "files": [("other", ("x", b"x", "text/plain"))]}, 422, "no_images"),
        ({"data": {"images": "t"}, "files": [("other", ("x", IMAGE, "image/png"))]}, 422, "invalid_request"),
        ({"data": {"image": "text"}}, 422, "invalid_request"),  # beside a file in images: still refused
        ({"files": None, "json": {"images": []}}, 415, "unsupported_media_type"),
        (
            {"files": None, "content": b"--x\r\nrubbish", "headers": {"content-type": MULTIPART}},
            400,
            "bad_request",
        ),
    ],
)
async def test_bad_detect_requests(tmp_path, request_kwargs, status, code):
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS), max_images_per_request=4)
    kwargs = {"files": files(IMAGE), **request_kwargs}
    if kwargs["files"] is None:
        del kwargs["files"]
    async with running(app) as client:
        assert_error(await client.post("/detect", **kwargs), status, code)
        assert (await client.post("/detect", files=files(IMAGE))).status_code == 200  # still serving


@pytest.mark.parametrize("route", ["/detect", "/detect/annotated"])
async def test_query_errors_name_every_bad_parameter_and_checks_keep_their_order(tmp_path, route):
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS), api_keys=["s3cret-key-1"])
    key = {"X-API-Key": "s3cret-key-1"}
    async with running(app) as client:
        bad = await client.post(f"{route}?conf=2&iou=x&tile_merge=y", files=files(IMAGE), headers=key)
        text = await client.post(route, data={"images": "x"}, files=files(IMAGE), headers=key)
        keyless = await client.post(route, json={"images": []})  # 401 before the content type's 415
        unsupported = await client.post(route, json={"images": []}, headers=key)
    message = assert_error(bad, 422, "invalid_request")
    assert message.startswith("query.conf: Input should be less than or equal to 1; query.iou: ")
    assert "query.tile_merge: Input should be 'nms' or 'nmm'" in message
    text_message = assert_error(text, 422, "invalid_request")
    assert text_message == "body.images.0: expected an image file, got a text field"
    assert_error(keyless, 401, "unauthorized")
    assert_error(unsupported, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"images": ["%%% not base64 %%%"]}, 400, "invalid_base64"),
        ({"images": []}, 422, "invalid_request"),
        ({"image": "abc"}, 422, "invalid_request"),
        ({"images": ["aGVsbG8="], "unknown": 1}, 422, "invalid_request"),
        ({"images": ["aGVsbG8="]}, 415, "invalid_image"),  # base64 of "hello"
        ({"images": ["aGVsbG8="], "conf": -1}, 422, "invalid_request"),
    ],
)
async def test_bad_json_requests(tmp_path, payload, status, code):
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS))
    async with running(app) as client:
        assert_error(await client.post("/detect/json", json=payload), status, code)


async def test_malformed_json_body(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS))
    async with running(app) as client:
        r = await client.post("/detect/json", content=b'{"images": [', headers={"content-type": JSON})
    assert_error(r, 422, "invalid_request")


async def test_json_route_checks_the_key_then_the_content_type_then_the_body(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS), api_keys=["s3cret-key-1"])
    key = {"X-API-Key": "s3cret-key-1"}
    payload = json.dumps({"images": [base64.b64encode(IMAGE).decode()], "conf": 0.5}).encode()
    async with running(app) as client:
        keyless = await client.post("/detect/json", content=b"{", headers={"content-type": JSON})
        text = await client.post(
            "/detect/json", content=payload, headers={**key, "content-type": "text/plain"}
        )
        form = await client.post("/detect/json", files=files(IMAGE), headers=key)
        broken = await client.post(
            "/detect/json", content=b'{"images": [', headers={**key, "content-type": JSON}
        )
        suffixed = await client.post(
            "/detect/json", content=payload, headers={**key, "content-type": "application/vnd.x+json"}
        )
        bom = await client.post(
            "/detect/json", content=codecs.BOM_UTF8 + payload, headers={**key, "content-type": JSON}
        )
    assert_error(keyless, 401, "unauthorized")  # an unauthenticated client learns nothing of the body
    assert "(multipart uploads go to POST /detect)" in assert_error(text, 415, "unsupported_media_type")
    assert_error(form, 415, "unsupported_media_type")
    assert assert_error(broken, 422, "invalid_request").startswith("body: Invalid JSON")
    assert suffixed.status_code == bom.status_code == 200, (suffixed.text, bom.text)
    assert suffixed.json()["results"] == bom.json()["results"]


async def test_pixels_checked_after_decoding_when_the_header_is_not_read(tmp_path):
    tiff = encode(solid(50, 50, (1, 2, 3)), ".tiff")  # header_size does not read TIFF
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS), max_image_pixels=2000)
    async with running(app) as client:
        assert_error(await client.post("/detect", files=files(tiff)), 413, "too_many_pixels")
        small = encode(solid(40, 40, (1, 2, 3)))
        assert (await client.post("/detect", files=files(small))).status_code == 200


async def test_unknown_route_and_wrong_method(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS))
    async with running(app) as client:
        assert_error(await client.get("/nowhere"), 404, "not_found")
        r = await client.get("/detect")
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST"


class CountingBody:
    """A streamed request body (no Content-Length) that records how much of it was read."""

    def __init__(self, prefix: bytes, chunks: int, chunk_size: int) -> None:
        self.prefix, self.chunks, self.chunk_size, self.sent = prefix, chunks, chunk_size, 0

    async def __aiter__(self):
        yield self.prefix
        for _ in range(self.chunks):
            self.sent += 1
            yield b"\0" * self.chunk_size


MULTIPART_PREFIX = (
    b'--B\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


async def test_body_limit_from_content_length(tmp_path):
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS), max_body_bytes=64 * 1024)
    async with running(app) as client:
        big = encode(solid(512, 512, (0, 0, 0))) + b"\0" * (70 * 1024)
        message = assert_error(await client.post("/detect", files=files(big)), 413, "payload_too_large")
        assert "65536" in message
        assert (await client.post("/detect", files=files(IMAGE))).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'yolor_rejected_total{reason="payload_too_large"} 1.0' in metrics


@pytest.mark.parametrize(
    ("route", "content_type"),
    [("/detect", "multipart/form-data; boundary=B"), ("/detect/json", "application/json")],
)
async def test_body_limit_while_streaming(tmp_path, route, content_type):
    """Without a Content-Length the limit still holds, and the rest of the body is never read."""
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS), max_body_bytes=64 * 1024)
    body = CountingBody(MULTIPART_PREFIX if route == "/detect" else b'{"images": ["', 100, 16 * 1024)
    async with running(app) as client:
        r = await client.post(route, content=body, headers={"content-type": content_type})
        assert_error(r, 413, "payload_too_large")
        assert body.sent < 10
        assert (await client.post("/detect", files=files(IMAGE))).status_code == 200


async def test_queue_full_is_503_with_retry_after(tmp_path):
    gate = Gate(topk_rows(OK_ROWS))
    limits = {"max_batch_size": 1, "queue_size": 2, "max_images_per_request": 2, "retry_after_s": 3}
    app, _ = fake_app(tmp_path, gate, warmup=False, **limits)
    async with running(app) as client:
        batcher = app.state.service.batcher
        first = asyncio.create_task(client.post("/detect", files=files(IMAGE)))  # held in the backend
        await wait_until(gate.entered.is_set, "the first batch reached the backend")
        queued = [asyncio.create_task(client.post("/detect", files=files(IMAGE))) for _ in range(2)]
        await wait_until(lambda: batcher.waiting == 2, "two images queued")
        refused = await client.post("/detect", files=files(IMAGE))
        gate.release.set()
        answered = await asyncio.gather(first, *queued)
        metrics = (await client.get("/metrics")).text
    assert_error(refused, 503, "overloaded")
    assert refused.headers["retry-after"] == "3"
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert 'yolor_rejected_total{reason="overloaded"} 1.0' in metrics


async def test_request_past_its_deadline_is_504(tmp_path):
    gate = Gate(topk_rows(OK_ROWS))
    app, _ = fake_app(tmp_path, gate, warmup=False, request_timeout_s=0.2)
    async with running(app) as client:
        try:
            r = await client.post("/detect", files=files(IMAGE))
        finally:
            gate.release.set()
        after = await client.post("/detect", files=files(IMAGE))
    assert_error(r, 504, "deadline_exceeded")
    assert after.status_code == 200


async def test_backend_failure_is_500_and_the_next_request_works(tmp_path, caplog):
    calls = {"n": 0}
    healthy = topk_rows(OK_ROWS)

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: secret internal detail")
        return healthy(batch)

    app, _ = fake_app(tmp_path, flaky, warmup=False)
    async with running(app) as client:
        with caplog.at_level(logging.ERROR, logger="service.core.batcher"):
            failed = await client.post("/detect", files=files(IMAGE))
        ok = await client.post("/detect", files=files(IMAGE))
    message = assert_error(failed, 500, "inference_failed")
    assert "secret" not in message
    assert "secret internal detail" in caplog.text  # logged for operators, not sent to clients
    assert ok.status_code == 200


async def test_backend_returning_the_wrong_shape_is_500(tmp_path):
    app, _ = fake_app(tmp_path, lambda batch: np.zeros((len(batch), 3, 6), np.float32), warmup=False)  # K=4
    async with running(app) as client:
        assert_error(await client.post("/detect", files=files(IMAGE)), 500, "inference_failed")


async def test_unexpected_exception_is_a_logged_500_without_traceback(tmp_path, caplog, monkeypatch):
    app, _ = fake_app(tmp_path, topk_rows(OK_ROWS))
    async with running(app) as client:
        from service.http import responses

        def broken(detector, outcome):
            raise KeyError("internal bookkeeping bug")

        monkeypatch.setattr(responses, "detect_response", broken)
        with caplog.at_level(logging.ERROR, logger="service.http.middleware"):
            r = await client.post("/detect", files=files(IMAGE))
        monkeypatch.undo()
        ok = await client.post("/detect", files=files(IMAGE))
        metrics = (await client.get("/metrics")).text
    message = assert_error(r, 500, "internal_error")
    assert "bookkeeping" not in message
    assert "internal bookkeeping bug" in caplog.text
    assert ok.status_code == 200
    assert 'yolor_requests_total{route="/detect",status="500"} 1.0' in metrics
