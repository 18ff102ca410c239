"""One server measured in one regime: its answers checked against ours, then the regime's closed
loop levels, open-loop rates and burst, with the server's whole process tree's CPU per image and
peak memory (bench/proctree.py). The same code measures `yolor serve` and every peer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np

from bench.load import closed_loop
from bench.peers.regimes import Regime
from bench.proctree import ProcessTree
from bench.rate_load import BurstResult, burst, open_loop
from bench.stats import Latency

Encode = Callable[[bytes], tuple[bytes, str]]
Answers = Callable[[bytes], list[dict[str, Any]]]

BOX_TOLERANCE_PX = 0.5  # batch composition changes ONNX Runtime's last bits, not more
SCORE_TOLERANCE = 2e-3


@dataclass(frozen=True)
class ClosedLevel:
    concurrency: int
    images_per_s: float
    latency: Latency | None
    errors: dict[str, int]
    server_cpu_ms_per_image: float | None  # the server's whole process tree


@dataclass(frozen=True)
class OpenLevel:
    rate: float
    sent: int
    answered: int
    latency: Latency | None  # from when each request was due
    errors: dict[str, int]


@dataclass
class Run:
    """One server, one round of one regime."""

    server: str
    round: int
    closed: list[ClosedLevel] = field(default_factory=list)
    open: list[OpenLevel] = field(default_factory=list)
    burst: BurstResult | None = None
    peak_pss_mb: float = 0.0

    @property
    def best(self) -> ClosedLevel | None:
        """The closed-loop level answering the most images/s."""
        return max(self.closed, key=lambda level: level.images_per_s, default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Mismatch(RuntimeError):
    """A server answered other detections than ours: it does not do the same work, so it is not timed."""


async def fetch_answers(url: str, encode: Encode, answers: Answers, jpegs: Sequence[bytes]) -> list[Any]:
    """Each JPEG's detections as the server at `url` answers them, one request at a time."""
    out = []
    async with aiohttp.ClientSession() as session:
        for jpeg in jpegs:
            content, content_type = encode(jpeg)
            async with session.post(url, data=content, headers={"Content-Type": content_type}) as response:
                body = await response.read()
                if response.status != 200:
                    raise Mismatch(f"{url} answered {response.status}: {body[:300]!r}")
            (answer,) = answers(body)
            out.append(answer["detections"])
    return out


def compare(reference: Sequence[Sequence[dict[str, Any]]], got: Sequence[Sequence[dict[str, Any]]]) -> None:
    """Raise Mismatch unless every image has the same detections (classes equal, boxes within
    BOX_TOLERANCE_PX, scores within SCORE_TOLERANCE, in score order)."""
    for index, (ours, theirs) in enumerate(zip(reference, got, strict=True)):
        if [d["class_id"] for d in ours] != [d["class_id"] for d in theirs]:
            raise Mismatch(f"image {index}: classes {[d['class_id'] for d in theirs]} != ours")
        if not ours:
            continue
        boxes = np.abs(np.array([d["box"] for d in ours]) - np.array([d["box"] for d in theirs])).max()
        scores = np.abs(np.array([d["score"] for d in ours]) - np.array([d["score"] for d in theirs])).max()
        if boxes > BOX_TOLERANCE_PX or scores > SCORE_TOLERANCE:
            raise Mismatch(f"image {index}: boxes differ by {boxes:.3f} px, scores by {scores:.5f}")


async def measure(
    run: Run,
    url: str,
    encode: Encode,
    tree: ProcessTree,
    regime: Regime,
    jpegs: Sequence[bytes],
    *,
    seconds: float,
    warmup_s: float,
) -> Run:
    """The regime's loads against `url`, in order: closed-loop levels, open-loop rates, the burst."""
    bodies = [encode(j) for j in jpegs]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60.0, connect=10.0)
    tree.watch()
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for level in regime.closed:
                cpu: dict[str, float] = {}

                async def read_cpu(edge: str) -> None:
                    cpu[edge] = tree.cpu_seconds()  # noqa: B023

                window = await closed_loop(
                    session, url, jpegs, concurrency=level, seconds=seconds, warmup_s=warmup_s,
                    on_window=read_cpu, encode=encode,
                )  # fmt: skip
                ok = window.ok
                run.closed.append(
                    ClosedLevel(
                        concurrency=level,
                        images_per_s=ok / window.seconds,
                        latency=Latency.of(window.latencies) if ok else None,
                        errors=dict(window.errors),
                        server_cpu_ms_per_image=(cpu["end"] - cpu["start"]) * 1000 / ok if ok else None,
                    )
                )
            for rate in regime.rates:
                w = await open_loop(session, url, bodies, rate=rate, seconds=seconds, warmup_s=warmup_s)
                latency = Latency.of(w.latencies) if w.ok else None
                run.open.append(OpenLevel(rate, w.sent, w.ok, latency, dict(w.errors)))
            if regime.burst is not None:
                size, client_timeout_s = regime.burst
                run.burst = await burst(session, url, bodies, size=size, timeout_s=client_timeout_s)
    finally:
        run.peak_pss_mb = tree.stop() / 2**20
    return run


def measure_sync(*args: Any, **kw: Any) -> Run:
    return asyncio.run(measure(*args, **kw))
