"""`yolor bench serve` end to end: the bare terms, the served sweep(s), the ratios, one report.

Order matters on a shared machine: the bare backend (loaded here as the server loads it) and the
pre-processing cost are measured first, with no server running; then the server is started and
swept; then, for the ratios, `rounds` side-by-side rounds alternate the bare backend and the
server (each idle while the other is measured), because a noisy machine drifts by more than the
differences measured. With `unbatched`, a second server (`YOLOR_MAX_BATCH_SIZE=1`,
`YOLOR_MAX_DELAY_MS=0`) is swept last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.bare import batch_sizes, bench_bare, bench_batch, load_backend
from bench.host import host_info
from bench.limits import Comparison, CpuLimit, Round, preprocess_cpu_ms
from bench.serve import LevelResult, Progress, ServedModel, concurrency_levels, served_model, sweep
from bench.server import spawned_server
from bench.timing import BatchResult
from service.host import host_cpu_count
from service.settings import Settings

log = logging.getLogger("yolor")

UNBATCHED = {"YOLOR_MAX_BATCH_SIZE": "1", "YOLOR_MAX_DELAY_MS": "0"}


@dataclass
class ServeBenchConfig:
    jpegs: Sequence[bytes]
    url: str | None = None  # a running server; None: start one for model_dir
    model_dir: Path | None = None  # for the bare terms (and the server started here)
    server_env: dict[str, str] = field(default_factory=dict)  # YOLOR_* for the started server(s)
    settings: Settings | None = None  # the same, for the bare side (default: Settings(model_dir=...))
    levels: Sequence[int] | None = None  # None: 1, 2, 4, ... 4 x max batch
    seconds: float = 10.0
    warmup_s: float = 2.0
    bare_seconds: float = 3.0
    unbatched: bool = False
    rounds: int = 3  # side-by-side rounds for the ratios (0: none)
    round_seconds: float = 5.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Sweep:
    name: str  # "batched" or "unbatched"
    model: ServedModel
    results: list[LevelResult]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "served": asdict(self.model),
            "levels": [r.to_dict() for r in self.results],
        }


@dataclass
class ServeReport:
    host: dict[str, Any]
    sweeps: list[Sweep]
    bare: list[BatchResult] = field(default_factory=list)
    limit: CpuLimit | None = None
    comparison: Comparison | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "bare": [r.to_dict() for r in self.bare],
            "limit": self.limit.to_dict() if self.limit else None,
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "sweeps": [s.to_dict() for s in self.sweeps],
        }


class BareSide:
    """The model loaded in this process as the server loads it, kept for the whole run (idle while
    the server is measured): the bare side of every comparison."""

    def __init__(self, config: ServeBenchConfig) -> None:
        assert config.model_dir is not None
        self.config = config
        self.settings = config.settings or Settings(model_dir=config.model_dir)
        self.manifest, self.backend, self.max_batch = load_backend(self.settings)

    def sweep(self) -> list[BatchResult]:
        return bench_bare(
            self.backend,
            batch_sizes(self.max_batch),
            min_seconds=self.config.bare_seconds,
            progress=lambda r: log.info(
                "bare batch %d: %.1f images/s, %.2f CPU ms/image",
                r.batch_size,
                r.images_per_s,
                r.cpu_ms_per_image,
            ),
        )

    def preprocess_cpu_ms(self) -> float:
        return preprocess_cpu_ms(
            self.config.jpegs,
            self.manifest,
            max_pixels=self.settings.max_image_pixels,
            reduced_decode=self.settings.jpeg_reduced_decode,
        )

    def batch(self, size: int, seconds: float) -> BatchResult:
        return bench_batch(self.backend, size, min_seconds=seconds)

    def close(self) -> None:
        self.backend.close()


def comparison_level(sweep_: Sweep) -> int | None:
    """The concurrency to compare at: the sweep's best images/s among levels >= 2 x max batch."""
    loaded = [r for r in sweep_.results if r.concurrency >= 2 * sweep_.model.max_batch_size and r.requests]
    return max(loaded, key=lambda r: r.images_per_s).concurrency if loaded else None


def side_by_side(
    bare: BareSide, sweep_: Sweep, base_url: str, pre_ms: float, progress: Progress | None
) -> Comparison | None:
    """`rounds` x (bare at max batch, served at the compared level, bare batch 1, served at 1)."""
    config, level = bare.config, comparison_level(sweep_)
    if level is None or sweep_.model.max_batch_size != bare.max_batch:
        log.warning("no side-by-side comparison: no level >= 2 x max batch, or the server's max batch "
                    "(%d) is not the bare one (%d)", sweep_.model.max_batch_size, bare.max_batch)  # fmt: skip
        return None
    seconds = config.round_seconds
    rounds = []
    for index in range(config.rounds):
        at_max = bare.batch(bare.max_batch, seconds)
        (loaded,) = _measure(base_url, [level], config, seconds, progress)
        at_one = bare.batch(1, seconds)
        (single,) = _measure(base_url, [1], config, seconds, progress)
        if loaded.latency is None or single.latency is None:
            log.warning("round %d: the server answered nothing; no comparison", index + 1)
            return None
        rounds.append(
            Round(
                bare_images_per_s=at_max.images_per_s,
                bare_cpu_ms_per_image=at_max.cpu_ms_per_image,
                served_images_per_s=loaded.images_per_s,
                bare_p50_ms_b1=at_one.latency.p50_ms,
                served_p50_ms_c1=single.latency.p50_ms,
                served_cpu_ms_per_image=loaded.server_cpu_ms_per_image,
                client_cpu_ms_per_image=loaded.client_cpu_ms_per_image,
            )
        )
        log.info("round %d: served/bare %.3f", index + 1, loaded.images_per_s / at_max.images_per_s)
    return Comparison(bare.max_batch, level, host_cpu_count(), pre_ms, rounds)


def _measure(
    base_url: str,
    levels: Sequence[int],
    config: ServeBenchConfig,
    seconds: float,
    progress: Progress | None,
    on_level: Callable[[LevelResult], None] | None = None,
) -> list[LevelResult]:
    return asyncio.run(
        sweep(
            base_url,
            config.jpegs,
            levels,
            seconds=seconds,
            warmup_s=config.warmup_s,
            headers=config.headers,
            progress=progress,
            on_level=on_level,
        )
    )


def _log_level(name: str, r: LevelResult) -> None:
    p50 = f"{r.latency.p50_ms:.1f}" if r.latency else "-"
    batch = f"{r.mean_batch:.2f}" if r.mean_batch else "-"
    log.info("%s concurrency %d: %.1f images/s, p50 %s ms, mean batch %s, errors %s",
             name, r.concurrency, r.images_per_s, p50, batch, r.errors or 0)  # fmt: skip


def _sweep_one(
    name: str,
    base_url: str,
    config: ServeBenchConfig,
    progress: Progress | None,
    levels: Sequence[int] | None = None,
) -> Sweep:
    async def describe() -> ServedModel:
        async with aiohttp.ClientSession(headers=config.headers) as session:
            return await served_model(session, base_url)

    model = asyncio.run(describe())
    chosen = levels or config.levels or concurrency_levels(model.max_batch_size)
    log.info("%s: %s %d px, %s %s on %s, max batch %d; concurrency %s, %g s each", name, model.arch,
             model.input_size, model.backend, model.precision, model.device, model.max_batch_size,
             list(chosen), config.seconds)  # fmt: skip
    results = _measure(base_url, chosen, config, config.seconds, progress, lambda r: _log_level(name, r))
    return Sweep(name, model, results)


def run(config: ServeBenchConfig, progress: Progress | None = None) -> ServeReport:
    if config.url is None and config.model_dir is None:
        raise ValueError("give a server URL or a model directory")
    if config.unbatched and config.url is not None:
        raise ValueError("--unbatched starts its own servers: give a model directory, not a URL")
    bare = BareSide(config) if config.model_dir is not None else None
    try:
        bare_results = bare.sweep() if bare else []
        pre_ms = bare.preprocess_cpu_ms() if bare else None
        limit = None
        if bare and pre_ms is not None:
            limit = CpuLimit(host_cpu_count(), bare_results[-1].cpu_ms_per_image, pre_ms)
            log.info(
                "decode + letterbox: %.2f CPU ms/image; CPU limit %.1f images/s", pre_ms, limit.images_per_s
            )
        sweeps: list[Sweep] = []
        comparison = None

        def batched(base_url: str) -> None:
            nonlocal comparison
            sweeps.append(_sweep_one("batched", base_url, config, progress))
            if bare is not None and pre_ms is not None and config.rounds > 0:
                comparison = side_by_side(bare, sweeps[0], base_url, pre_ms, progress)

        if config.url is not None:
            batched(config.url.rstrip("/"))
        else:
            assert config.model_dir is not None
            with spawned_server(config.model_dir, config.server_env) as (base_url, _):
                batched(base_url)
            if config.unbatched:
                with spawned_server(config.model_dir, {**config.server_env, **UNBATCHED}) as (base_url, _):
                    levels = [r.concurrency for r in sweeps[0].results]  # the batched server's levels
                    sweeps.append(_sweep_one("unbatched", base_url, config, progress, levels))
    finally:
        if bare is not None:
            bare.close()
    return ServeReport(host_info(), sweeps, bare_results, limit, comparison)
