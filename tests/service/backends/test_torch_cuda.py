"""The torch CUDA backend: chunk plan, model preparation and import guard on the CPU; its pipeline's
bookkeeping with torch.cuda faked (sequential, so this checks indexing and which ordering calls are
made, not that a GPU honours them); the real thing on a GPU (skipped without one: never run in CI or
so far in any session)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.backends.base import BackendClosed, BackendUnavailable
from service.backends.torch_cuda import (
    Chunk,
    TorchCudaBackend,
    inference_forward,
    output_rows,
    plan_chunks,
    prepare_model,
    run_sizes,
)

ROOT = Path(__file__).resolve().parents[3]
MAX_BATCH = 7


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.mark.unit
def test_run_sizes():
    assert run_sizes(32) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert run_sizes(3) == (1, 2, 3)
    assert run_sizes(32, [8, 1, 4, 8]) == (1, 4, 8)
    for bad in ([], [0, 4], [33]):
        with pytest.raises(ValueError, match="graph_sizes"):
            run_sizes(32, bad)


def _brute_force_plan(batch_size: int, sizes: tuple[int, ...]) -> list[Chunk]:
    """Whole chunks of the largest size, then the one smallest size that holds the rest."""
    whole, rest = divmod(batch_size, sizes[-1])
    chunks = [Chunk(i * sizes[-1], sizes[-1], sizes[-1]) for i in range(whole)]
    if rest:
        chunks.append(Chunk(whole * sizes[-1], rest, min(s for s in sizes if s >= rest)))
    return chunks


@pytest.mark.unit
@pytest.mark.parametrize("sizes", [(1, 2, 3, 4, 5, 6, 7, 8), (1, 2, 4, 8), (8,), (3, 5), (1, 16), (32,)])
def test_plan_chunks_covers_the_batch_padding_only_the_last_chunk(sizes):
    for batch_size in range(1, 70):
        plan = plan_chunks(batch_size, sizes)
        assert plan == _brute_force_plan(batch_size, sizes)
        starts = [c.start for c in plan]
        assert starts == [sum(c.count for c in plan[:i]) for i in range(len(plan))]
        assert sum(c.count for c in plan) == batch_size
        assert all(c.size in sizes and c.count <= c.size for c in plan)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, int]:
    """A tiny random main-branch checkpoint (see tests.support.nets) and its input size."""
    pytest.importorskip("torch")
    from tests.support.nets import IMG_SIZE, tiny_checkpoint

    path = tiny_checkpoint("yolor_csp", tmp_path_factory.mktemp("torch_cuda") / "tiny.pt")
    return path, IMG_SIZE["yolor_csp"]


def _reference(checkpoint: Path, batch: np.ndarray) -> np.ndarray:
    """The unfused FP32 model's own eval output, on the CPU."""
    import torch

    import yolor

    model = yolor.load_model(checkpoint).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


@pytest.mark.model
def test_output_rows_and_the_prepared_model_match_the_unfused_model(tiny):
    import torch

    import yolor

    checkpoint, size = tiny
    batch = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    want = _reference(checkpoint, batch)
    model = yolor.load_model(checkpoint)
    assert want.shape == (2, output_rows(size, model.strides, model.spec.num_anchors), 5 + model.nc)
    for half, tolerance in ((False, 1e-4), (True, 1e-2)):
        prepared, anchors = prepare_model(model, torch.device("cpu"), half=half)
        assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())
        assert anchors.dtype == torch.float32
        x = torch.from_numpy(batch).to(next(prepared.parameters()).dtype)
        with torch.inference_mode():
            got = inference_forward(prepared, anchors)(x.contiguous(memory_format=torch.channels_last))
        assert got.dtype == torch.float32
        assert rel_error(got.numpy(), want) < tolerance


@pytest.mark.unit
def test_the_module_imports_without_torch_and_the_backend_is_then_unavailable(tmp_path):
    script = f"""
import sys
for name in ("torch", "yolor"):
    sys.modules[name] = None  # any import of these now raises ImportError
from service.backends.base import BackendUnavailable
from service.backends.torch_cuda import TorchCudaBackend, plan_chunks
assert plan_chunks(3, (1, 2)) and "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
try:
    TorchCudaBackend({str(tmp_path / "x.pt")!r}, input_size=64, max_batch_size=1)
except BackendUnavailable as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "needs torch" in out.stdout


@pytest.mark.unit
def test_without_a_gpu_the_backend_is_unavailable(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        TorchCudaBackend(tmp_path / "x.pt", input_size=64, max_batch_size=1)


CALLS: list[tuple[Any, ...]] = []  # what the pipeline asked of the fake torch.cuda, in order


class _FakeStream:
    def __init__(self, *args: object) -> None:
        pass

    def wait_stream(self, other: _FakeStream) -> None:
        CALLS.append(("wait_stream", self, other))

    def wait_event(self, event: _FakeEvent) -> None:
        assert event.recorded, "waits on an event that was never recorded"


DEFAULT_STREAM = _FakeStream()


@contextlib.contextmanager
def _on(stream: _FakeStream) -> Iterator[None]:
    CALLS.append(("stream", stream))
    yield


class _FakeEvent:
    def __init__(self, enable_timing=False, blocking=False, interprocess=False, external=False) -> None:
        self.recorded, self.blocking = False, blocking

    def record(self, stream: object = None) -> None:
        self.recorded = True

    def synchronize(self) -> None:
        assert self.recorded, "synchronizes on an event that was never recorded"
        CALLS.append(("host_wait", self))


class _FakeGraph:
    def replay(self) -> None:  # captures nothing: the outputs of a replay are not checked
        pass


@contextlib.contextmanager
def _capture(cuda_graph, pool=None, stream=None, capture_error_mode="global") -> Iterator[None]:
    assert capture_error_mode in ("global", "thread_local", "relaxed")
    CALLS.append(("capture", capture_error_mode))
    yield


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as a sequential no-op that logs to CALLS: streams (one current stream), events,
    device contexts, captures that capture nothing; tensors stay on the CPU, torch.zeros is logged."""
    torch = pytest.importorskip("torch")
    real_empty, real_zeros = torch.empty, torch.zeros

    def empty(*args, pin_memory=False, **kwargs):
        return real_empty(*args, **kwargs)

    def zeros(*args, **kwargs):
        CALLS.append(("zeros",))
        return real_zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "zeros", zeros)
    CALLS.clear()
    fakes = {
        "is_available": lambda: True,
        "get_device_name": lambda device=None: "fake GPU",
        "Stream": _FakeStream,
        "Event": _FakeEvent,
        "stream": _on,
        "device": lambda device: contextlib.nullcontext(),
        "current_stream": lambda device=None: DEFAULT_STREAM,
        "synchronize": lambda device=None: CALLS.append(("synchronize",)),
        "empty_cache": lambda: None,
        "graph_pool_handle": lambda: object(),
        "CUDAGraph": _FakeGraph,
        "graph": _capture,
    }
    for name, value in fakes.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # the backend sets it: undo after
    return torch


@pytest.fixture
def echo(monkeypatch):
    """Backends built from here on run the GPU bench's echo (`bench.gpu_checks.echo_forward`: the
    input repeated and cut to the output's shape) instead of the net."""
    from bench.gpu_checks import echo_forward
    from service.backends import torch_cuda

    def stand_in(model, anchors):
        return echo_forward(output_rows(model.input_size, model.strides, anchors.shape[1]), 5 + model.nc)

    monkeypatch.setattr(torch_cuda, "inference_forward", stand_in)


def _check_every_batch_size(backend: TorchCudaBackend, want) -> None:
    """Every size from 1 to MAX_BATCH, twice (copied and not), each time with other images."""
    rng = np.random.default_rng(1)
    _, size, _ = backend.input_shape
    for n in [*range(1, MAX_BATCH + 1), MAX_BATCH, 1]:
        for copy_output in (True, False):
            backend.copy_output = copy_output
            batch = rng.random((n, 3, size, size), dtype=np.float32)
            got = backend.infer(batch)
            assert got.shape == (n, *backend.output_shape)
            want(got, batch)
            assert np.shares_memory(got, backend._pipeline.host_out.numpy()) is not copy_output


def _exactly(rows: int, columns: int):
    def check(got: np.ndarray, batch: np.ndarray) -> None:
        from bench.gpu_checks import echo_expected

        np.testing.assert_array_equal(got, echo_expected(batch, rows, columns))

    return check


@pytest.mark.model
@pytest.mark.parametrize("graph_sizes", [None, (1, 2, 4), (3,), (2, 5)])
def test_the_pipeline_puts_every_image_of_every_chunk_in_place(fake_cuda, echo, tiny, graph_sizes):
    checkpoint, size = tiny
    backend = TorchCudaBackend(
        checkpoint,
        input_size=size,
        max_batch_size=MAX_BATCH,
        device="cpu",
        graph_sizes=graph_sizes,
        cuda_graphs=False,
    )
    assert backend.graph_sizes == run_sizes(MAX_BATCH, graph_sizes)
    _check_every_batch_size(backend, _exactly(*backend.output_shape))
    assert backend.close() and backend.closed
    with pytest.raises(BackendClosed):
        backend.infer(np.zeros((1, 3, size, size), np.float32))


@pytest.mark.model
def test_the_gpu_benchs_pipeline_check_runs_its_echo_through_make_forward(fake_cuda, tiny, monkeypatch):
    """`yolor bench gpu`'s pipeline_check stands its echo in for the net through `make_forward` (no
    patching) and checks every image: it fails where graph replays do nothing (the fake CUDA's
    graphs capture nothing), passes once capture fails and the backend runs eagerly; a forward that
    swaps images is caught too."""
    from bench.gpu_checks import echo_expected, echo_forward, pipeline_check

    checkpoint, size = tiny
    inputs = np.random.default_rng(0).random((MAX_BATCH, 3, size, size), dtype=np.float32)
    device = fake_cuda.device("cpu")
    replays_nothing = pipeline_check(checkpoint, size, MAX_BATCH, inputs, device)
    assert not replays_nothing["passed"], replays_nothing

    def no_capture(graph, pool=None, capture_error_mode="global"):
        raise RuntimeError("capture not supported")

    monkeypatch.setattr(fake_cuda.cuda, "graph", no_capture)
    eager = pipeline_check(checkpoint, size, MAX_BATCH, inputs, device)
    assert eager["passed"] and len(eager["checks"]) == 4, eager

    def swapped(model, anchors):
        forward = echo_forward(output_rows(size, model.strides, anchors.shape[1]), 5 + model.nc)
        return lambda x: forward(x.flip(0))

    backend = TorchCudaBackend(
        checkpoint, input_size=size, max_batch_size=MAX_BATCH, device="cpu", cuda_graphs=False,
        make_forward=swapped,
    )  # fmt: skip
    try:
        batch = inputs[:2]
        assert not np.array_equal(backend.infer(batch), echo_expected(batch, *backend.output_shape))
    finally:
        backend.close()


@pytest.mark.model
def test_a_failed_capture_falls_back_to_eager(fake_cuda, echo, tiny, monkeypatch, caplog):
    def no_capture(graph, pool=None, capture_error_mode="global"):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(fake_cuda.cuda, "graph", no_capture)
    checkpoint, size = tiny
    backend = TorchCudaBackend(checkpoint, input_size=size, max_batch_size=MAX_BATCH, device="cpu")
    with caplog.at_level(logging.WARNING, logger="service.backends.torch_cuda"):
        _check_every_batch_size(backend, _exactly(*backend.output_shape))
    fallbacks = [r.getMessage() for r in caplog.records if "no CUDA graph" in r.getMessage()]
    assert len(fallbacks) == MAX_BATCH  # one warning per size, the first time it runs
    assert "stream is capturing" in fallbacks[0]
    backend.close()


def _eager_backend(tiny) -> TorchCudaBackend:
    checkpoint, size = tiny
    return TorchCudaBackend(
        checkpoint, input_size=size, max_batch_size=MAX_BATCH, device="cpu", cuda_graphs=False
    )


@pytest.mark.model
def test_the_side_streams_start_after_the_zero_fill(fake_cuda, echo, tiny):
    """x is zero-filled on the current stream and then written on the compute stream: unordered, the
    fill could land after the first image (no capture synchronizes the device in eager mode)."""
    backend = _eager_backend(tiny)
    _check_every_batch_size(backend, _exactly(*backend.output_shape))
    pipeline = backend._pipeline
    for stream in (pipeline.h2d, pipeline.compute, pipeline.d2h):
        first_use = CALLS.index(("stream", stream))
        last_fill = max(i for i, call in enumerate(CALLS[:first_use]) if call == ("zeros",))
        between = CALLS[last_fill:first_use]
        assert ("wait_stream", stream, DEFAULT_STREAM) in between or ("synchronize",) in between
    backend.close()


@pytest.mark.model
def test_the_events_the_host_waits_on_are_blocking(fake_cuda, echo, tiny):
    """A non-blocking event's synchronize spins a CPU core for the whole wait."""
    backend = _eager_backend(tiny)
    _check_every_batch_size(backend, _exactly(*backend.output_shape))  # copy_output True and False
    waited = [call[1] for call in CALLS if call[0] == "host_wait"]
    assert waited and all(event.blocking for event in waited)
    backend.close()


@pytest.mark.model
def test_graphs_are_captured_thread_local(fake_cuda, echo, tiny):
    """A "global" capture fails the CUDA calls of every other thread: those of the backend still
    serving while this one loads."""
    checkpoint, size = tiny
    backend = TorchCudaBackend(checkpoint, input_size=size, max_batch_size=MAX_BATCH, device="cpu")
    for n in range(1, MAX_BATCH + 1):
        backend.infer(np.zeros((n, 3, size, size), np.float32))
    assert [call for call in CALLS if call[0] == "capture"] == [("capture", "thread_local")] * MAX_BATCH
    backend.close()


def _gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize(("graph_sizes", "cuda_graphs"), [(None, True), ((1, 2, 4), True), ((3,), False)])
def test_on_a_gpu_the_pipeline_puts_every_image_in_place(echo, tiny, graph_sizes, cuda_graphs):
    _gpu()
    checkpoint, size = tiny
    backend = TorchCudaBackend(
        checkpoint,
        input_size=size,
        max_batch_size=MAX_BATCH,
        graph_sizes=graph_sizes,
        cuda_graphs=cuda_graphs,
    )
    backend._pipeline.host_out.fill_(float("nan"))  # poison: every returned row must have been written
    _check_every_batch_size(backend, _exactly(*backend.output_shape))
    assert backend.close()


@pytest.mark.gpu
def test_on_a_gpu_the_net_matches_the_fp32_model(tiny):
    _gpu()
    checkpoint, size = tiny
    backend = TorchCudaBackend(checkpoint, input_size=size, max_batch_size=MAX_BATCH, graph_sizes=(1, 2, 4))

    def close_to_fp32(got: np.ndarray, batch: np.ndarray) -> None:
        want = _reference(checkpoint, batch)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got[..., 4:], want[..., 4:], rtol=0, atol=2e-3)  # scores
        np.testing.assert_allclose(got[..., :4], want[..., :4], rtol=2e-3, atol=0.5)  # boxes, pixels

    _check_every_batch_size(backend, close_to_fp32)
    batch = np.random.default_rng(2).random((MAX_BATCH, 3, size, size), dtype=np.float32)
    first, again = backend.infer(batch), backend.infer(batch)
    np.testing.assert_array_equal(first, again)  # a replay computes what the last one did
    assert backend.close()


@pytest.mark.model
def test_with_top_k_the_backend_answers_the_exported_top_k_head(fake_cuda, tiny):
    """The K best candidates picked by the backend (on the GPU) are `topk_candidates` of its raw rows:
    the layout and rows the exported ONNX `topk` head gives the server."""
    from yolor.heads import topk_candidates

    checkpoint, size = tiny
    common = {"input_size": size, "max_batch_size": 4, "device": "cpu", "cuda_graphs": False}
    raw = TorchCudaBackend(checkpoint, **common)
    top = TorchCudaBackend(checkpoint, top_k=20, **common)
    assert (raw.head, top.head) == ("raw", "topk") and top.output_shape == (20, 6)
    batch = np.random.default_rng(3).random((3, 3, size, size), dtype=np.float32)
    want = topk_candidates(fake_cuda.from_numpy(raw.infer(batch)), 20).numpy()
    got = top.infer(batch)
    assert got.shape == (3, 20, 6)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert (np.diff(got[..., 4], axis=1) <= 0).all()  # sorted by score
    rows = raw.output_shape[0]
    assert TorchCudaBackend(checkpoint, top_k=10 * rows, **common).output_shape == (rows, 6)
    with pytest.raises(ValueError, match="top_k"):
        TorchCudaBackend(checkpoint, top_k=0, **common)
    assert raw.close() and top.close()
