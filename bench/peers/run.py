"""`yolor bench peers`: for each regime, rounds of every server in turn (the order rotated each round,
ours first in the first round, so a machine that slows for a while slows every server of a round),
each started afresh, its answers checked against ours before it is timed, then measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.images import sample_jpegs
from bench.load import multipart_body
from bench.peers.launch import ROOT, spawned_peer
from bench.peers.measure import Answers, Encode, Mismatch, Run, compare, fetch_answers, measure_sync
from bench.peers.regimes import Regime
from bench.peers.registry import PEERS
from bench.peers.venvs import peer_python
from bench.proctree import ProcessTree
from bench.server import ServerFailed, spawned_server
from bench.standin import standin_command
from service.manifest import load_manifest

log = logging.getLogger(__name__)

OURS = "yolor"
DEMO_SAMPLE = ROOT / "service" / "demo_model" / "sample.jpg"
PHOTO_SIZES = {"vga": (640, 480), "12mp": (4000, 3000)}


@dataclass(frozen=True)
class PeersConfig:
    model_dir: Path  # the demo model (or the user's)
    p6_model: Path | None  # for the cpu-p6 regime
    peers: tuple[str, ...]
    rounds: int = 3
    seconds: float = 6.0
    warmup_s: float = 2.0
    limits: bool = True  # also measure the machine's limit per regime (bench/peers/limits.py)

    def model_for(self, regime: Regime) -> Path:
        model_dir = self.model_dir if regime.model == "demo" else self.p6_model
        if model_dir is None:
            raise ValueError(f"regime {regime.key} needs a yolor_p6 model directory (--p6-model)")
        return model_dir


@dataclass
class RegimeRuns:
    regime: Regime
    servers: list[str]
    runs: list[Run] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # server -> why it was not measured
    limit: dict[str, Any] | None = None  # the machine's limit for the regime's work

    def to_dict(self) -> dict[str, Any]:
        return {
            "regime": self.regime.__dict__,
            "servers": self.servers,
            "runs": [r.to_dict() for r in self.runs],
            "skipped": self.skipped,
        }


def _ours_answers(body: bytes) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = json.loads(body)["results"]
    return answers


@contextlib.contextmanager
def serving(server: str, regime: Regime, model_dir: Path) -> Iterator[tuple[str, int, Encode, Answers]]:
    """(detect URL, pid, request encoder, answer reader) of `server` serving `model_dir` for `regime`."""
    if server == OURS:
        command = standin_command(model_dir, regime.standin_ms) if regime.standin_ms else None
        with spawned_server(model_dir, command=command, cwd=ROOT) as (base_url, pid):
            yield f"{base_url}/detect", pid, multipart_body, _ours_answers
        return
    peer = PEERS[server]
    python = peer_python(peer)
    probe = DEMO_SAMPLE.read_bytes()
    layout = replace(regime.layout(), max_batch=load_manifest(model_dir).max_batch)  # ours' largest batch
    with spawned_peer(peer, python, model_dir, layout, probe) as (url, pid):
        yield url, pid, peer.encode, peer.answers


def run_regime(
    regime: Regime, config: PeersConfig, on_run: Callable[[Run], None] | None = None
) -> RegimeRuns:
    model_dir = config.model_for(regime)
    jpegs = sample_jpegs(PHOTO_SIZES[regime.photos])
    # The same work is checked where every server decodes alike: ours decodes a JPEG 4x+ the input at
    # reduced scale (its default), so 12 MP photos are checked through their 640x480 versions.
    checked = [DEMO_SAMPLE.read_bytes(), *(jpegs if regime.photos == "vga" else sample_jpegs())]
    servers = [OURS, *config.peers]
    result = RegimeRuns(regime, servers)
    if config.limits:
        from bench.peers.limits import regime_limit

        result.limit = regime_limit(regime, model_dir, jpegs)
    reference: list[Any] | None = None
    for r in range(config.rounds):
        order = servers[r % len(servers) :] + servers[: r % len(servers)]
        if reference is None:
            order = [OURS, *(s for s in order if s != OURS)]
        for server in order:
            if server in result.skipped:
                continue
            try:
                with serving(server, regime, model_dir) as (url, pid, encode, answers):
                    got = asyncio.run(fetch_answers(url, encode, answers, checked))
                    if reference is None:
                        reference = got
                    else:
                        compare(reference, got)
                    seconds, warmup_s = regime.windows(config.seconds, config.warmup_s)
                    run = measure_sync(
                        Run(server, r), url, encode, ProcessTree(pid), regime, jpegs,
                        seconds=seconds, warmup_s=warmup_s,
                    )  # fmt: skip
            except (Mismatch, ServerFailed) as e:
                if server == OURS:
                    raise
                log.warning("%s: %s is not measured: %s", regime.key, server, e)
                result.skipped[server] = str(e).splitlines()[0][:300]
                continue
            result.runs.append(run)
            if on_run is not None:
                on_run(run)
    return result


def run_all(
    regimes: Sequence[Regime], config: PeersConfig, on_run: Callable[[Run], None] | None = None
) -> list[RegimeRuns]:
    return [run_regime(regime, config, on_run) for regime in regimes]
