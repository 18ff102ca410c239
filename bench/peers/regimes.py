"""The six regimes `yolor bench peers` measures, each the load and model where one part of a server's
design decides (the issue's list; each is its own table in docs/benchmarks.md)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.peers.launch import PeerLayout


@dataclass(frozen=True)
class Regime:
    key: str
    title: str
    closed: tuple[int, ...] = ()  # closed-loop concurrencies
    rates: tuple[float, ...] = ()  # open-loop rates, requests/s
    burst: tuple[int, float] | None = None  # (requests at once, client timeout s)
    model: str = "demo"  # "demo", or "p6": the model directory given with --p6-model
    photos: str = "vga"  # "vga": 640x480 sample photos; "12mp": the same at 4000x3000
    standin_ms: float = 0.0  # > 0: inference is this sleep per batch of 8 (an accelerator stand-in)
    peer_workers: int = 2  # workers / replicas each peer scales to (1 for one accelerator)
    window_scale: float = 1.0  # x --seconds and --warmup: a slow model needs longer windows to count

    def windows(self, seconds: float, warmup_s: float) -> tuple[float, float]:
        return seconds * self.window_scale, warmup_s * self.window_scale

    def layout(self) -> PeerLayout:
        return PeerLayout(workers=self.peer_workers, standin_ms=self.standin_ms)


REGIMES: dict[str, Regime] = {
    r.key: r
    for r in (
        Regime("cpu-demo", "CPU, the demo model (inference and decode both small)", closed=(8, 16, 32)),
        Regime(
            "cpu-p6",
            "CPU, yolor_p6 at 640 (inference-bound)",
            closed=(4, 8, 16),
            model="p6",
            window_scale=5.0,  # ~2 images/s on two cores: 30 s windows count ~60 images
        ),
        Regime(
            "accelerator",
            "Accelerator stand-in (a 40 ms GIL-free sleep per batch of 8: ceiling 200 images/s)",
            closed=(16, 32, 64),
            standin_ms=40.0,
            peer_workers=1,
        ),
        Regime("large-photos", "12 MP JPEGs (decode-bound)", closed=(4, 8, 16), photos="12mp"),
        Regime("latency", "One client at a time, and a low fixed rate", closed=(1,), rates=(10.0,)),
        Regime("overload", "A burst of 1000 requests (5 s client timeout)", burst=(1000, 5.0)),
    )
}
