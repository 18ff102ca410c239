"""X-Request-ID: the request's own or a new one, on every answer (errors from the body limit and the
v2 routes too), in our error body, in the JSON log lines of the request, and on the gRPC port."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from service.logs import REQUEST_ID, JsonFormatter, start_request
from tests.support.app import encode, fake_app, files, running, serving, solid, topk_rows

pytestmark = [pytest.mark.api, pytest.mark.anyio]

IMAGE = encode(solid(32, 32, (10, 20, 30)))
NEW = re.compile(r"[0-9a-f]{32}")


async def test_every_answer_carries_the_requests_id_or_a_new_one(tmp_path) -> None:
    app, _ = fake_app(tmp_path, topk_rows([[2, 2, 9, 9, 0.9, 0]]), max_body_bytes=100_000)
    async with running(app) as client:
        made = await client.post("/detect", files=files(IMAGE))
        assert made.status_code == 200 and NEW.fullmatch(made.headers["x-request-id"])
        again = await client.post("/detect", files=files(IMAGE))
        assert again.headers["x-request-id"] != made.headers["x-request-id"]
        kept = await client.post("/detect", files=files(IMAGE), headers={"X-Request-ID": "lb-7f3a:42"})
        assert kept.headers["x-request-id"] == "lb-7f3a:42"
        for bad in (b"has space", b"x" * 129, "é".encode()):
            replaced = await client.get("/healthz", headers={"X-Request-ID": bad})
            assert NEW.fullmatch(replaced.headers["x-request-id"]), bad
        refused = await client.post("/detect", files=files(b"not an image"), headers={"X-Request-ID": "r-1"})
        assert refused.status_code == 415 and refused.json()["error"]["request_id"] == "r-1"
        too_big = await client.post("/detect", content=b"x" * 200_000, headers={"Content-Type": "image/png"})
        assert too_big.status_code == 413
        assert too_big.json()["error"]["request_id"] == too_big.headers["x-request-id"]
        v2 = await client.get("/v2/models/nope", headers={"X-Request-ID": "v2-call"})
        assert v2.status_code == 404 and v2.headers["x-request-id"] == "v2-call"
        assert isinstance(v2.json()["error"], str)  # the protocol's body, unchanged


async def test_a_requests_log_lines_carry_its_id_and_only_its_own() -> None:
    def line() -> dict[str, object]:
        record = logging.LogRecord("yolor", logging.INFO, __file__, 1, "answered", None, None)
        return json.loads(JsonFormatter().format(record))

    async def request(given: str) -> dict[str, object]:
        start_request(given)
        await asyncio.sleep(0)  # the other request runs meanwhile
        return line()

    first, second = await asyncio.gather(request("id-1"), request("id-2"))
    assert (first["request_id"], second["request_id"]) == ("id-1", "id-2")
    assert "request_id" not in line() and REQUEST_ID.get() is None


def test_the_grpc_port_returns_the_calls_id(tmp_path) -> None:
    grpc = pytest.importorskip("grpc")
    from service.kserve.messages import SERVICE, messages

    app, _ = fake_app(tmp_path, topk_rows([[2, 2, 9, 9, 0.9, 0]]), grpc_port=0)
    with serving(app), grpc.insecure_channel(f"127.0.0.1:{app.state.grpc.port}") as channel:
        live = channel.unary_unary(
            f"/{SERVICE}/ServerLive",
            request_serializer=messages()["ServerLiveRequest"].SerializeToString,
            response_deserializer=messages()["ServerLiveResponse"].FromString,
        )
        answer, call = live.with_call(messages()["ServerLiveRequest"](), metadata=(("x-request-id", "g-1"),))
        assert answer.live and ("x-request-id", "g-1") in call.initial_metadata()
        _, call = live.with_call(messages()["ServerLiveRequest"]())
        assert NEW.fullmatch(dict(call.initial_metadata())["x-request-id"])
