"""PyTorch backend: the fused YOLOR net in FP16 on a CUDA GPU, for GPU hosts without TensorRT.

The only place in `service/` that touches torch or the `yolor` package, and only inside functions:
importing this module needs neither. It returns the raw head layout `(B, N, 5 + nc)` (the model's
own eval output), or with `top_k` the top-K layout `(B, K, 6)`, the K best candidates picked on
the GPU (the export's `topk` head, `yolor.heads.topk_candidates`): at 1280 px a raw output is ~35 MB
per image to copy to the host, the top 300 rows 7 KB. The server post-processes by `head`.

How a batch runs. The net is fused, FP16, channels_last, in inference mode; the boxes are decoded in
float32 (FP16 spacing near 1280 px is a whole pixel). A batch is split into chunks of the largest of
`graph_sizes` (default every size 1..8); each chunk size runs as a CUDA graph captured on first use
(or eagerly, with a warning, if its capture fails), a remainder with no size of its own is padded up
to the next one. Chunks are pipelined through two device slots: while the GPU runs chunk k, the host
copies chunk k+1 into pinned memory and a copy stream moves it in, and another moves chunk k-1 out.
The float32 -> FP16 channels_last conversion runs on the GPU.

Not run on a GPU in this repository's CI or sessions so far. The CPU tests cover the chunk plan, the
model preparation, the import guard and the pipeline's bookkeeping with torch.cuda faked (sequential:
they check which ordering calls the pipeline makes, not that a GPU honours them); the GPU tests and
`benchmarks/gpu.sh` are prepared, unrun.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.backends.base import BackendUnavailable, BaseBackend, FloatBatch

if TYPE_CHECKING:  # types only: torch and yolor are imported inside the functions that use them
    import torch
    import torch.cuda

    from yolor import YOLOR

log = logging.getLogger(__name__)

DEFAULT_LARGEST_GRAPH = 8  # a guess, not a measurement: 8 images at 1280 px should fill one GPU
WARMUP_RUNS = 2  # eager runs before a capture: cuDNN autotuning and lazy init stay out of the graph
SLOTS = 2  # device buffers per direction: chunk k+1 copies in while chunk k runs

Forward = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Chunk:
    """Images `start : start + count` of a batch, run with the graph of batch size `size` >= count."""

    start: int
    count: int
    size: int


def run_sizes(max_batch_size: int, graph_sizes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The batch sizes the backend runs (each one graph), ascending: `graph_sizes`, or by default
    every size from 1 to min(8, max_batch_size). Raises ValueError for a size outside
    [1, max_batch_size]."""
    if graph_sizes is None:
        return tuple(range(1, min(DEFAULT_LARGEST_GRAPH, max_batch_size) + 1))
    sizes = tuple(sorted(set(graph_sizes)))
    if not sizes or sizes[0] < 1 or sizes[-1] > max_batch_size:
        raise ValueError(f"graph_sizes must lie in [1, {max_batch_size}], got {list(graph_sizes)}")
    return sizes


def plan_chunks(batch_size: int, sizes: Sequence[int]) -> list[Chunk]:
    """Split a batch into chunks of the largest of `sizes` (ascending); the last chunk, if smaller,
    runs with the smallest size that holds it (the padding rows are computed and dropped)."""
    chunks = []
    for start in range(0, batch_size, sizes[-1]):
        count = min(sizes[-1], batch_size - start)
        chunks.append(Chunk(start, count, next(s for s in sizes if s >= count)))
    return chunks


def output_rows(input_size: int, strides: Sequence[int], num_anchors: int) -> int:
    """N of the raw head: one row per anchor per cell of every level."""
    return num_anchors * sum((input_size // s) ** 2 for s in strides)


def prepare_model(model: YOLOR, device: torch.device, *, half: bool = True) -> tuple[YOLOR, torch.Tensor]:
    """A fused, eval-mode, channels_last copy of `model` on `device` (FP16 when `half`), and its
    anchors, (nl, na, 2) float32 on `device`, for the float32 decode. `model` is left untouched."""
    import torch

    import yolor

    fused = yolor.fuse_model(model)
    anchors = fused.anchors.detach().float().clone().to(device)
    dtype = torch.float16 if half else torch.float32
    fused = fused.to(device=device, dtype=dtype)
    fused = fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in the stubs
    fused.requires_grad_(False)
    return fused, anchors


def inference_forward(model: YOLOR, anchors: torch.Tensor) -> Forward:
    """x (B, 3, S, S) in the model's dtype -> (B, N, 5 + nc) float32: the net in its own dtype,
    `yolor.heads.decode` in float32."""
    from yolor.heads import decode

    strides = model.strides

    def forward(x: torch.Tensor) -> torch.Tensor:
        return decode([r.float() for r in model.raw_outputs(x)], anchors, strides)

    return forward


def with_top_k(forward: Forward, k: int) -> Forward:
    """`forward` followed by the top-K head: (B, min(k, N), 6) x1, y1, x2, y2, score, class."""
    from yolor.heads import topk_candidates

    def top(x: torch.Tensor) -> torch.Tensor:
        pred = forward(x)
        return topk_candidates(pred, min(k, pred.shape[1]))

    return top


class _Pipeline:
    """The GPU side: static buffers, one graph (or eager step) per size, three streams."""

    def __init__(
        self,
        forward: Forward,
        graph_forward: Forward,
        device: torch.device,
        max_batch_size: int,
        sizes: tuple[int, ...],
        image: tuple[int, int, int],
        out: tuple[int, int],
        *,
        graphs: bool,
    ) -> None:
        import torch

        self.torch, self.device, self.sizes = torch, device, sizes
        self.cuda: Any = torch.cuda  # its Stream and Event constructors carry no type hints
        self.forward, self.graph_forward = forward, graph_forward
        largest = sizes[-1]
        self.host_in = torch.empty((max_batch_size, *image), dtype=torch.float32, pin_memory=True)
        self.host_out = torch.empty((max_batch_size, *out), dtype=torch.float32, pin_memory=True)
        self.slot_in = torch.empty((SLOTS, largest, *image), dtype=torch.float32, device=device)
        self.slot_out = torch.empty((SLOTS, largest, *out), dtype=torch.float32, device=device)
        x = torch.zeros((largest, *image), dtype=torch.float16, device=device)
        self.x = x.contiguous(memory_format=torch.channels_last)  # the graphs' input: x[:size]
        self.y = torch.empty((largest, *out), dtype=torch.float32, device=device)  # and output
        self.h2d, self.compute, self.d2h = (self.cuda.Stream(device) for _ in range(3))
        # prepare_model's upload and x's zero fill were queued on the current stream: the side
        # streams start after them (a capture synchronizes the device first, an eager step does not).
        for stream in (self.h2d, self.compute, self.d2h):
            stream.wait_stream(torch.cuda.current_stream(device))
        self.pool = torch.cuda.graph_pool_handle() if graphs else None  # one pool: graphs never overlap
        self.runs: dict[int, Callable[[], None]] = {}

    def run(self, batch: FloatBatch, copy_output: bool) -> FloatBatch:
        torch = self.torch
        plan = plan_chunks(len(batch), self.sizes)
        with torch.cuda.device(self.device), torch.inference_mode():
            try:
                for size in sorted({c.size for c in plan}):  # capture while no copy is in flight
                    self._step(size)
                done = self._submit(torch.from_numpy(batch), plan)
                return self._collect(plan, done, copy_output)
            except BaseException:  # leave no copy running into the host buffers the next call fills
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize(self.device)
                raise

    def _submit(self, source: torch.Tensor, plan: list[Chunk]) -> list[torch.cuda.Event]:
        """Queue every chunk; per chunk, an event for 'its result is in host_out'."""
        on = self.torch.cuda.stream
        consumed: list[torch.cuda.Event] = []  # chunk k's input slot may be refilled
        done: list[torch.cuda.Event] = []  # chunk k's output slot may be refilled, host_out rows ready
        for k, c in enumerate(plan):
            rows, slot = slice(c.start, c.start + c.count), k % SLOTS
            slot_in, slot_out = self.slot_in[slot, : c.count], self.slot_out[slot, : c.count]
            self.host_in[rows].copy_(source[rows])  # on the CPU, while the GPU works on chunk k-1
            with on(self.h2d):
                if k >= SLOTS:
                    self.h2d.wait_event(consumed[k - SLOTS])
                slot_in.copy_(self.host_in[rows], non_blocking=True)
                arrived = self._recorded()
            with on(self.compute):
                self.compute.wait_event(arrived)
                self.x[: c.count].copy_(slot_in)  # float32 NCHW -> FP16 channels_last
                consumed.append(self._recorded())
                self.runs[c.size]()
                if k >= SLOTS:
                    self.compute.wait_event(done[k - SLOTS])
                slot_out.copy_(self.y[: c.count])
                computed = self._recorded()
            with on(self.d2h):
                self.d2h.wait_event(computed)
                self.host_out[rows].copy_(slot_out, non_blocking=True)
                done.append(self._recorded())
        return done

    def _collect(self, plan: list[Chunk], done: list[torch.cuda.Event], copy_output: bool) -> FloatBatch:
        n = plan[-1].start + plan[-1].count
        if not copy_output:
            done[-1].synchronize()  # one d2h stream: the last copy out ends after all the others
            view: FloatBatch = self.host_out[:n].numpy()
            return view
        out = np.empty((n, *self.host_out.shape[1:]), np.float32)
        target = self.torch.from_numpy(out)
        for c, event in zip(plan, done, strict=True):  # copy chunk k while later chunks still run
            event.synchronize()
            target[c.start : c.start + c.count].copy_(self.host_out[c.start : c.start + c.count])
        return out

    def _recorded(self) -> torch.cuda.Event:
        """A new event, recorded on the current stream. Blocking: a host thread that synchronizes on
        it (`_collect` on `done`) sleeps instead of spinning a core; stream waits are unaffected."""
        event: torch.cuda.Event = self.cuda.Event(blocking=True)
        event.record()
        return event

    def _step(self, size: int) -> Callable[[], None]:
        if size not in self.runs:
            self.runs[size] = self._eager(size) if self.pool is None else self._capture(size)
        return self.runs[size]

    def _eager(self, size: int, forward: Forward | None = None) -> Callable[[], None]:
        x, y, fn = self.x[:size], self.y[:size], forward or self.forward

        def step() -> None:
            y.copy_(fn(x))

        return step

    def _capture(self, size: int) -> Callable[[], None]:
        """The replay of a graph of batch size `size`, or the eager step when capture fails."""
        torch = self.torch
        step = self._eager(size, self.graph_forward)
        graph = torch.cuda.CUDAGraph()
        try:
            side = self.cuda.Stream(self.device)  # warm up off the default stream, as torch's docs do
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            # thread_local, not the default "global": a global capture makes the unsafe CUDA calls
            # (cudaMalloc, synchronizations) of every other thread fail, e.g. those of the old
            # backend still serving during a reload. A process-wide lock would not help: TensorRT and
            # onnxruntime would not take it. Other threads queue on their own streams, outside this
            # capture (torch.compile's CUDA graphs capture the same way).
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                step()
        except Exception as e:  # an op that cannot be captured, a torch.compile failure, ...
            log.warning(
                "torch backend: no CUDA graph for batch size %d (%s: %s); eager", size, type(e).__name__, e
            )
            torch.cuda.synchronize(self.device)  # a sticky CUDA error raises here, and the call fails
            return self._eager(size)
        log.info("torch backend: captured a CUDA graph for batch size %d", size)
        replay: Callable[[], None] = graph.replay
        return replay


class TorchCudaBackend(BaseBackend):
    """The fused net on one CUDA device, FP16; see the module docstring for how a batch runs.

    `graph_sizes`: the batch sizes to run (default 1..min(8, max batch)); larger batches go in chunks
    of the largest. `cuda_graphs=False` runs every size eagerly (same pipeline). `copy_output`
    (public, may change between calls): False returns a view of the pinned output buffer, valid until
    the next `infer` (the batcher copies such a view before the next batch enters, so it can serve
    with False).
    `compile_model`: `torch.compile` the forward before capture (every size compiles on its own).
    `top_k`: answer the top-K head (the K best candidates per image, picked on the GPU), not raw rows.
    `make_forward(model, anchors)`: the forward the pipeline runs, from the prepared (fused, FP16,
    channels_last) model and its float32 anchors (default `inference_forward`); it must answer
    (B, rows, 5 + nc) float32. A stand-in, e.g. an echo of the input, checks the pipeline itself.
    """

    def __init__(
        self,
        checkpoint: Path,
        *,
        input_size: int,
        max_batch_size: int,
        device: str = "cuda:0",
        graph_sizes: Sequence[int] | None = None,
        cuda_graphs: bool = True,
        copy_output: bool = True,
        compile_model: bool = False,
        top_k: int | None = None,
        make_forward: Callable[[YOLOR, torch.Tensor], Forward] | None = None,
    ) -> None:
        try:
            import torch

            import yolor
        except ImportError as e:
            raise BackendUnavailable(f"the torch backend needs torch and the yolor package: {e}") from e
        if not torch.cuda.is_available():
            raise BackendUnavailable("the torch backend needs a CUDA GPU; torch sees none")
        sizes = run_sizes(max_batch_size, graph_sizes)
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotuned kernels pay off
        dev = torch.device(device)
        model, anchors = prepare_model(yolor.load_model(checkpoint), dev)
        rows, columns = output_rows(input_size, model.strides, anchors.shape[1]), 5 + int(model.nc)
        if top_k is not None:
            if top_k < 1:
                raise ValueError(f"top_k must be >= 1, got {top_k}")
            rows, columns = min(top_k, rows), 6
        mode = "CUDA graphs" if cuda_graphs else "eager"
        super().__init__(
            name="torch",
            precision="fp16",
            device=f"{device} ({torch.cuda.get_device_name(dev)}, torch {torch.__version__}, {mode})",
            head="raw" if top_k is None else "topk",
            max_batch_size=max_batch_size,
            input_name="images",
            input_shape=(3, input_size, input_size),
            output_shape=(rows, columns),
            accelerator=True,
        )
        forward = (make_forward or inference_forward)(model, anchors)
        if top_k is not None:
            forward = with_top_k(forward, top_k)
        graph_forward: Forward = torch.compile(forward, dynamic=False) if compile_model else forward
        self.copy_output = copy_output
        self._pipeline: _Pipeline | None = _Pipeline(
            forward,
            graph_forward,
            dev,
            max_batch_size,
            sizes,
            self.input_shape,
            (rows, columns),
            graphs=cuda_graphs,
        )
        self.graph_sizes = sizes
        log.info("torch backend: %s (%s) on %s, sizes %s", checkpoint, model.arch, self.device, sizes)

    def _infer(self, batch: FloatBatch) -> FloatBatch:
        assert self._pipeline is not None  # BaseBackend calls no _infer after _release
        return self._pipeline.run(batch, self.copy_output)

    def _release(self) -> None:
        if self._pipeline is not None:
            torch, device = self._pipeline.torch, self._pipeline.device
            self._pipeline = None
            try:
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
            except RuntimeError as e:  # a sticky CUDA error from a failed call: nothing left to free
                log.warning("torch backend: releasing after a CUDA error: %s", e)
