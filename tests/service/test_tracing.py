"""OpenTelemetry traces against a real OTLP receiver (tests/support/otlp.py, decoding the exporter's
protobuf): the spans of concurrent batched requests and their links, a client's traceparent in and
out on HTTP and gRPC, sampling, an exporter that is down, and nothing at all when tracing is off."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.server import free_port
from service.logs import JsonFormatter
from service.tracing import RequestTrace, Tracing, wanted
from tests.support.app import Gate, encode, fake_app, files, running, serving, solid, topk_rows
from tests.support.otlp import Span, by_name, children, grpc_receiver, http_receiver
from tests.support.processes import started_process, wait_until_ok

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.api, pytest.mark.anyio]

IMAGE = encode(solid(48, 64, (10, 20, 30)))
ROWS = [[2, 2, 9, 9, 0.9, 0], [20, 20, 30, 30, 0.8, 1]]
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
STAGES = {"decode", "letterbox", "queue.wait", "inference", "postprocess"}


@pytest.fixture
def receiver(monkeypatch):
    with http_receiver() as r:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
        yield r


def server_spans(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.kind == 2]  # SPAN_KIND_SERVER


def within(child: Span, parent: Span) -> bool:
    return parent.start_ns <= child.start_ns <= child.end_ns <= parent.end_ns


@pytest.mark.parametrize(
    ("setting", "env", "on"),
    [
        (None, {}, False),
        (True, {}, True),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        (True, {"OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_when_tracing_is_on(setting, env, on) -> None:
    assert wanted(setting, env) is on


@pytest.mark.slow
def test_off_imports_no_sdk_and_starts_no_thread(tmp_path) -> None:
    """Off (the default), a served request creates no span: the SDK is never imported and no
    exporter thread runs."""
    script = f"""
import asyncio, sys, threading
from tests.support.app import encode, fake_app, files, running, solid, topk_rows
async def main():
    app, _ = fake_app(__import__("pathlib").Path({str(tmp_path)!r}), topk_rows({ROWS!r}))
    async with running(app) as client:
        answer = await client.post("/detect", files=files(encode(solid(32, 32, (1, 2, 3)))))
        assert answer.status_code == 200 and "traceparent" not in answer.headers
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
        print(sorted(t.name for t in threading.enumerate()))
asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "YOLOR_"))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    modules, threads = done.stdout.splitlines()
    assert modules == "[]"
    assert "OtelBatchSpanProcessor" not in threads and "yolor-tracing" not in threads, threads


async def test_concurrent_requests_share_a_batch_that_links_to_each(tmp_path, receiver) -> None:
    """Three requests held behind a running batch are batched together (4 images): one `batch` span links to
    each request's image span, each request's `inference` span links back to it, and every stage
    nests inside its request's span, timed as it ran."""
    gate = Gate(topk_rows(ROWS))
    app, _ = fake_app(tmp_path, gate, max_batch_size=8, tracing=True)
    gate.release.set()  # for the warm-up
    async with running(app) as client:
        gate.release.clear()
        gate.entered.clear()
        held = asyncio.create_task(client.post("/detect", files=files(IMAGE)))
        await asyncio.to_thread(gate.entered.wait, 5)  # in the backend, held
        uploads = [files(IMAGE), files(IMAGE), files(IMAGE, IMAGE)]  # 4 images: the model's max batch
        others = [asyncio.create_task(client.post("/detect", files=f)) for f in uploads]
        await asyncio.sleep(0.2)  # queued behind the held batch
        gate.release.set()
        answers = [await held, *[await t for t in others]]
        assert all(a.status_code == 200 for a in answers)
    spans = receiver.wait_for(lambda s: len(server_spans(s)) == 4, "four requests")
    requests = {s.trace_id: s for s in server_spans(spans)}
    assert len(requests) == 4 and all(s.name == "POST /detect" for s in requests.values())
    for answer in answers:
        trace_id = answer.headers["traceparent"].split("-")[1]
        assert requests[trace_id].attributes["http.response.status_code"] == 200
    shared = [b for b in by_name(spans, "batch") if b.attributes["yolor.batch.size"] == 4]
    assert len(shared) == 1, [(b.attributes["yolor.batch.size"], b.links) for b in by_name(spans, "batch")]
    batch = shared[0]
    assert batch.parent_id == "" and batch.trace_id not in requests  # a root, in no request's trace
    linked = {trace_id for trace_id, _ in batch.links}
    assert len(batch.links) == 4 and len(linked) == 3 and linked <= set(requests)
    assert batch.attributes["yolor.model"] == "yolor" and batch.attributes["yolor.backend"] == "fake"
    assert batch.attributes["yolor.batch.detections"] == 4 * len(ROWS)
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    for trace_id, span_id in batch.links:
        image = by_id[(trace_id, span_id)]
        assert image.name == "image" and image.parent_id == requests[trace_id].span_id
        assert {s.name for s in children(spans, image)} == STAGES
        (inference,) = by_name(children(spans, image), "inference")
        assert inference.links == [(batch.trace_id, batch.span_id)]
        assert (inference.start_ns, inference.end_ns) == (batch.start_ns, batch.end_ns)
        (queued,) = by_name(children(spans, image), "queue.wait")
        assert queued.end_ns == batch.start_ns and queued.end_ns - queued.start_ns > 0.15e9  # held
        assert image.attributes["yolor.detections"] == len(ROWS) and image.attributes["yolor.tiles"] == 0
        assert (image.attributes["yolor.image.width"], image.attributes["yolor.image.height"]) == (64, 48)
    for span in spans:
        if span.trace_id in requests and span.parent_id:
            assert within(span, requests[span.trace_id]), span.name
    assert sorted(requests[t].attributes["yolor.images"] for t in linked) == [1, 1, 2]


async def test_a_sliced_image_has_a_span_per_window(tmp_path, receiver) -> None:
    app, _ = fake_app(tmp_path, topk_rows(ROWS), max_batch_size=4, tracing=True)
    big = encode(solid(96, 96, (1, 2, 3)))
    async with running(app) as client:
        answer = await client.post("/detect?tile=true&tile_size=32", files=files(big))
        assert answer.status_code == 200
    trace_id = answer.headers["traceparent"].split("-")[1]
    spans = receiver.wait_for(lambda s: any(x.name == "merge" for x in s), "the merge")
    (image,) = [s for s in by_name(spans, "image") if s.trace_id == trace_id]
    tiles = by_name(children(spans, image), "tile")
    assert len(tiles) == image.attributes["yolor.tiles"] + 1 > 4  # its windows and the whole image
    assert len(by_name(children(spans, image), "merge")) == 1
    for tile in tiles:
        assert {s.name for s in children(spans, tile)} == {"queue.wait", "inference", "postprocess"}
    linked = {link for b in by_name(spans, "batch") for link in b.links}
    assert {(t.trace_id, t.span_id) for t in tiles} == linked


async def test_the_clients_traceparent_is_the_parent_and_comes_back(tmp_path, receiver) -> None:
    app, _ = fake_app(tmp_path, topk_rows(ROWS), tracing=True)
    sent = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "tracestate": "vendor=abc"}
    async with running(app) as client:
        answer = await client.post("/detect", files=files(IMAGE), headers={**sent, "X-Request-ID": "r-42"})
        await client.post("/detect", files=files(b"not an image"), headers=sent)
        for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready", "/v2/models/yolor/ready"):
            assert "traceparent" not in (await client.get(path)).headers, path
    version, trace_id, span_id, flags = answer.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE, "01") and span_id != CLIENT_SPAN
    assert answer.headers["tracestate"] == "vendor=abc"
    spans = receiver.wait_for(lambda s: len(server_spans(s)) == 2, "both requests")
    (served,) = [s for s in server_spans(spans) if s.span_id == span_id]
    assert served.parent_id == CLIENT_SPAN and served.attributes["yolor.request_id"] == "r-42"
    assert served.attributes["http.route"] == "/detect"
    assert served.resource["service.name"] == "yolor-serving"
    (failed,) = [s for s in server_spans(spans) if s is not served]
    assert failed.attributes["http.response.status_code"] == 415 and failed.status == 0  # the client's error
    (image,) = [s for s in by_name(spans, "image") if s.parent_id == failed.span_id]
    assert image.status == 2  # the image that failed its request
    assert not [
        s for s in server_spans(spans) if "health" in s.name or "ready" in s.name or "metrics" in s.name
    ]


async def test_latency_exemplars_name_the_sampled_requests_trace(tmp_path, receiver) -> None:
    app, _ = fake_app(tmp_path, topk_rows(ROWS), tracing=True)
    async with running(app) as client:
        answer = await client.post("/detect", files=files(IMAGE))
        trace_id = answer.headers["traceparent"].split("-")[1]
        plain = await client.get("/metrics")
        open_metrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert " # {" not in plain.text
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    lines = [line for line in open_metrics.text.splitlines() if f'trace_id="{trace_id}"' in line]
    named = {line.split("_bucket")[0] for line in lines}
    assert named == {"yolor_request_duration_seconds", "yolor_model_request_duration_seconds"}, lines


async def test_log_lines_carry_the_trace_of_the_request_they_belong_to(receiver) -> None:
    def line() -> dict[str, object]:
        record = logging.LogRecord("yolor", logging.INFO, __file__, 1, "answered", None, None)
        return json.loads(JsonFormatter().format(record))

    tracing = Tracing()

    async def request() -> tuple[RequestTrace, dict[str, object], dict[str, object]]:
        traced = tracing.start("GET /x", {}, {})
        await asyncio.sleep(0)  # the other request runs meanwhile
        inside = line()
        traced.end({})
        return traced, inside, line()

    try:
        for traced, inside, after in await asyncio.gather(request(), request()):
            assert (inside["trace_id"], inside["span_id"]) == (traced.trace_id, traced.span_id)
            assert "trace_id" not in after and "span_id" not in after
    finally:
        tracing.shutdown()


async def test_a_batcher_started_in_a_traced_request_logs_outside_it(receiver) -> None:
    """A model loaded on demand starts its batcher inside the request that asked for it: the
    batcher's own log lines (a failed batch, later) must not carry that request's ids."""
    import numpy as np

    from service.core.batcher import DynamicBatcher
    from service.core.metrics import Metrics

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("backend down")

    tracing = Tracing()
    traced = tracing.start("POST /detect", {}, {}, request_id="asked-for-the-model")
    batcher = DynamicBatcher(
        broken, max_batch_size=2, max_delay_s=0.0, queue_size=4, metrics=Metrics().for_model("m", 1)
    )
    await batcher.start()
    traced.end({})
    seen: list[dict[str, object]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(json.loads(JsonFormatter().format(record)))

    handler = Keep()
    logging.getLogger("service.core.batcher").addHandler(handler)
    try:
        (failed,) = await asyncio.gather(
            *batcher.submit([np.zeros((3, 4, 4), np.float32)], time.monotonic() + 5), return_exceptions=True
        )
    finally:
        logging.getLogger("service.core.batcher").removeHandler(handler)
        await batcher.stop(1.0)
        tracing.shutdown()
    assert isinstance(failed, Exception) and seen
    assert all("trace_id" not in line and "request_id" not in line for line in seen), seen


@pytest.mark.parametrize(
    ("sampler", "parent_flags", "exported"),
    [
        ("always_off", None, False),
        ("parentbased_traceidratio", None, False),
        ("parentbased_traceidratio", "01", True),
    ],
)
async def test_sampling(tmp_path, receiver, monkeypatch, sampler, parent_flags, exported) -> None:
    """Not sampled: nothing is exported, no batch span either; a sampled client's parent is followed."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    app, _ = fake_app(tmp_path, topk_rows(ROWS), tracing=True)
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-{parent_flags}"} if parent_flags else {}
    async with running(app) as client:
        answers = [await client.post("/detect", files=files(IMAGE), headers=headers) for _ in range(3)]
        metrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert all(a.status_code == 200 for a in answers)
    assert all(int(a.headers["traceparent"][-2:], 16) & 1 == exported for a in answers)  # the sampled flag
    if exported:
        spans = receiver.wait_for(lambda s: len(by_name(s, "batch")) == 3, "three batches")
        assert {s.trace_id for s in server_spans(spans)} == {CLIENT_TRACE}
    else:
        time.sleep(0.3)  # the app has shut down and flushed: anything exported has arrived
        assert receiver.requests == 0 and receiver.spans == []
        assert "trace_id" not in metrics.text


@pytest.mark.slow
@pytest.mark.parametrize("collector", ["refused", "silent"])
async def test_an_exporter_that_is_down_affects_no_request(tmp_path, monkeypatch, collector) -> None:
    """A collector refusing connections, or accepting and never answering: requests answer as fast
    as ever, the span queue stays bounded, and shutting down waits a bounded time."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if collector == "silent":
        listener.listen(64)  # connections are accepted by the kernel, never answered
    else:
        listener.close()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8")
    app, _ = fake_app(tmp_path, topk_rows(ROWS), max_batch_size=8, tracing=True)
    try:
        async with running(app) as client:
            start = time.monotonic()
            answers = await asyncio.gather(*(client.post("/detect", files=files(IMAGE)) for _ in range(40)))
            took = time.monotonic() - start
            assert all(a.status_code == 200 for a in answers) and took < 5.0, took
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 8.0  # SHUTDOWN_TIMEOUT_S, not the exporter's retries
    finally:
        listener.close()


def test_grpc_calls_take_and_return_the_traceparent(tmp_path, monkeypatch) -> None:
    grpc = pytest.importorskip("grpc")
    grpcclient = pytest.importorskip("tritonclient.grpc")
    import numpy as np

    from service.kserve.messages import SERVICE, messages
    from tests.support.model_files import INPUT_SIZE

    with grpc_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
        app, _ = fake_app(tmp_path, topk_rows(ROWS), grpc_port=0, tracing=True)
        sent = (("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),)
        with serving(app), grpc.insecure_channel(f"127.0.0.1:{app.state.grpc.port}") as channel:
            metadata = channel.unary_unary(
                f"/{SERVICE}/ModelMetadata",
                request_serializer=messages()["ModelMetadataRequest"].SerializeToString,
                response_deserializer=messages()["ModelMetadataResponse"].FromString,
            )
            _, call = metadata.with_call(messages()["ModelMetadataRequest"](name="yolor"), metadata=sent)
            returned = dict(call.initial_metadata())["traceparent"]
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{app.state.grpc.port}")
            tensor = grpcclient.InferInput("images", [2, 3, INPUT_SIZE, INPUT_SIZE], "FP32")
            tensor.set_data_from_numpy(np.zeros((2, 3, INPUT_SIZE, INPUT_SIZE), np.float32))
            client.infer("yolor", [tensor], headers=dict(sent))
            client.is_server_ready()
            client.close()
            spans = receiver.wait_for(lambda s: len(by_name(s, "batch")) == 1, "the infer's batch")
    assert returned.split("-")[1] == CLIENT_TRACE and returned.split("-")[2] != CLIENT_SPAN
    calls = {s.name: s for s in server_spans(spans)}
    assert set(calls) == {f"{SERVICE}/ModelMetadata", f"{SERVICE}/ModelInfer"}  # not the probe
    infer = calls[f"{SERVICE}/ModelInfer"]
    assert infer.trace_id == CLIENT_TRACE and infer.parent_id == CLIENT_SPAN
    assert infer.attributes["rpc.grpc.status_code"] == 0 and infer.attributes["yolor.model"] == "yolor"
    assert sorted(s.name for s in children(spans, infer)) == ["inference"] * 2 + ["queue.wait"] * 2
    (batch,) = by_name(spans, "batch")
    assert batch.links == [(CLIENT_TRACE, infer.span_id)]  # once, for both its inputs


@pytest.mark.slow
def test_a_real_servers_access_line_carries_the_trace(tmp_path, receiver) -> None:
    """`yolor serve` with YOLOR_TRACING=1: uvicorn's own access line, as JSON, names the request's
    trace and span, and the request's spans reach the receiver."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOR_")}
    env |= {"YOLOR_LOG_FORMAT": "json", "YOLOR_TRACING": "1"}
    command = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "service.log"
    with started_process(command, log, cwd=REPO, env=env) as process:
        wait_until_ok(f"http://127.0.0.1:{port}/readyz", process, log, timeout_s=60)
        answer = httpx.post(f"http://127.0.0.1:{port}/detect", files=files(IMAGE), timeout=30)
        assert answer.status_code == 200
    _, trace_id, span_id, _ = answer.headers["traceparent"].split("-")
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "uvicorn.access" and "/detect" in line["message"]]
    assert access and access[0]["trace_id"] == trace_id and access[0]["span_id"] == span_id
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id for x in server_spans(s)), "the request")
    assert {s.name for s in spans if s.trace_id == trace_id} >= {"POST /detect", "image", *STAGES}


async def test_a_video_requests_frames_are_traced_by_group(tmp_path, receiver) -> None:
    """A clip's frames: one `frames` span per group sent to the batcher (not spans per frame), each
    linked to the batches that ran it; those batches link to the request's span."""
    pytest.importorskip("av")
    from tests.support.app import demo_app
    from tests.support.video import make_clip, sample_frames

    app = demo_app(tracing=True)
    async with running(app) as client:
        clip = make_clip(sample_frames(12))
        answer = await client.post("/detect/video", files={"video": ("clip.mp4", clip, "video/mp4")})
        assert answer.status_code == 200
    trace_id = answer.headers["traceparent"].split("-")[1]
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id for x in server_spans(s)), "the request")
    (served,) = [s for s in server_spans(spans) if s.trace_id == trace_id]
    assert served.name == "POST /detect/video"
    groups = [s for s in by_name(spans, "frames") if s.trace_id == trace_id]
    assert sum(g.attributes["yolor.frames"] for g in groups) == 12 and len(groups) >= 2
    assert all(g.parent_id == served.span_id and within(g, served) for g in groups)
    batches = {(b.trace_id, b.span_id): b for b in by_name(spans, "batch")}
    linked = [link for g in groups for link in g.links]
    assert linked and all(link in batches for link in linked)
    for key in set(linked):
        assert set(batches[key].links) == {(trace_id, served.span_id)}
    lines = [json.loads(line) for line in answer.text.splitlines()]
    found = sum(len(line["detections"]) for line in lines if "frame" in line)
    assert sum(g.attributes["yolor.detections"] for g in groups) == found > 0


@pytest.mark.slow
def test_a_streams_frames_are_traces_of_their_own(tmp_path, receiver) -> None:
    pytest.importorskip("av")
    from tests.support.app import demo_app
    from tests.support.video import make_clip, sample_frames

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "cam.mp4").write_bytes(make_clip(sample_frames(10)))
    admin = {"X-API-Key": "admin-key-123"}
    app = demo_app(tracing=True, admin_keys=[admin["X-API-Key"]], stream_root=tmp_path / "clips")
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_until_ok(f"{url}/readyz", _Alive(), tmp_path / "none.log", timeout_s=60)
        created = client.post("/streams", json={"source": "cam.mp4", "fps": 30}, headers=admin)
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        give_up = time.monotonic() + 30
        while client.get(f"/streams/{stream_id}").json()["state"] != "ended":
            assert time.monotonic() < give_up
            time.sleep(0.1)
    spans = receiver.wait_for(lambda s: len(by_name(s, "stream.frame")) == 10, "ten frames")
    frames = by_name(spans, "stream.frame")
    assert len({f.trace_id for f in frames}) == 10 and all(f.parent_id == "" and f.kind == 5 for f in frames)
    assert sorted(f.attributes["yolor.frame"] for f in frames) == list(range(10))
    linked = {link for b in by_name(spans, "batch") for link in b.links}
    for frame in frames:
        assert frame.attributes["yolor.stream.id"] == stream_id and frame.attributes["yolor.model"] == "yolor"
        stages = {s.name for s in children(spans, frame)}
        assert stages == {"letterbox", "queue.wait", "inference", "postprocess"}
        assert (frame.trace_id, frame.span_id) in linked


class _Alive:
    """A stand-in process for `wait_until_ok`: the server runs in this process's thread."""

    def poll(self) -> None:
        return None
