"""What `yolor bench peers` writes: per regime, each server's medians over rounds, ours over the
best peer (the median of the per-round ratios), as JSON, Markdown tables and a plot."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.peers.measure import Run
from bench.peers.registry import PEERS
from bench.peers.run import OURS, RegimeRuns
from bench.stats import rate


def title(server: str) -> str:
    return "yolor serve" if server == OURS else PEERS[server].title


def _median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def _per_round_ratio(
    runs: RegimeRuns, value: Callable[[Run], float | None], higher_is_better: bool
) -> float | None:
    """Median over rounds of ours / the best peer of that round (best: highest or lowest `value`)."""
    ratios = []
    for r in sorted({run.round for run in runs.runs}):
        ours = [v for x in runs.runs if x.round == r and x.server == OURS and (v := value(x)) is not None]
        peers = [v for x in runs.runs if x.round == r and x.server != OURS and (v := value(x)) is not None]
        if not ours or not peers:
            continue
        best = max(peers) if higher_is_better else min(peers)
        if best > 0:
            ratios.append(ours[0] / best)
    return statistics.median(ratios) if ratios else None


def _best_rate(run: Run) -> float | None:
    return run.best.images_per_s if run.best else None


def _c1_p99(run: Run) -> float | None:
    level = next((c for c in run.closed if c.concurrency == 1), None)
    return level.latency.p99_ms if level and level.latency else None


def server_summary(runs: Sequence[Run]) -> dict[str, Any]:
    """One server's medians over its rounds."""
    best = [r.best for r in runs if r.best is not None]
    summary: dict[str, Any] = {"rounds": len(runs), "peak_pss_mb": max(r.peak_pss_mb for r in runs)}
    if best:
        summary |= {
            "images_per_s": _median([b.images_per_s for b in best]),
            "concurrency": statistics.mode(b.concurrency for b in best),
            "p50_ms": _median([b.latency.p50_ms if b.latency else None for b in best]),
            "p99_ms": _median([b.latency.p99_ms if b.latency else None for b in best]),
            "server_cpu_ms_per_image": _median([b.server_cpu_ms_per_image for b in best]),
            "errors": sum(sum(b.errors.values()) for b in best),
        }
    if runs[0].open:
        summary["open"] = []
        for i, level in enumerate(runs[0].open):
            latencies = [lat for r in runs if (lat := r.open[i].latency) is not None]
            summary["open"].append(
                {
                    "rate": level.rate,
                    "p50_ms": _median([lat.p50_ms for lat in latencies]),
                    "p99_ms": _median([lat.p99_ms for lat in latencies]),
                    "errors": sum(sum(r.open[i].errors.values()) for r in runs),
                }
            )
    bursts = [r.burst for r in runs if r.burst is not None]
    if bursts:
        summary["burst"] = {
            "size": bursts[0].size,
            "answered": _median([b.answered for b in bursts]),
            "shed": _median([b.shed for b in bursts]),
            "failed": _median([b.failed for b in bursts]),
            "failures": [b.failures for b in bursts],
            "recovery_s": _median([b.recovery_s for b in bursts]),
            "recovered": sum(b.recovery_s is not None for b in bursts),
        }
    return summary


def regime_summary(runs: RegimeRuns) -> dict[str, Any]:
    servers = {
        s: server_summary([r for r in runs.runs if r.server == s])
        for s in runs.servers
        if any(r.server == s for r in runs.runs)
    }
    return {
        "regime": runs.regime.key,
        "title": runs.regime.title,
        "servers": servers,
        "skipped": runs.skipped,
        "ours_over_best_peer_images_per_s": _per_round_ratio(runs, _best_rate, True),
        "ours_over_best_peer_c1_p99": _per_round_ratio(runs, _c1_p99, False),
        "limit": runs.limit,
    }


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(summaries: Sequence[dict[str, Any]]) -> str:
    out: list[str] = []
    for s in summaries:
        out += [f"### {s['title']}", ""]
        servers = s["servers"]
        if any("images_per_s" in v for v in servers.values()):
            out += [
                "| server | images/s | at concurrency | p50 ms | p99 ms | server CPU ms/img | peak PSS MB "
                "| errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for name, v in servers.items():
                out.append(
                    f"| {title(name)} | {rate(v['images_per_s'])} | {v['concurrency']} | {_f(v['p50_ms'])} | "
                    f"{_f(v['p99_ms'])} | {_f(v['server_cpu_ms_per_image'], 2)} | {v['peak_pss_mb']:.0f} | "
                    f"{v['errors']} |"
                )
            out.append("")
        if any("open" in v for v in servers.values()):
            out += ["| server | open-loop rate /s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|"]
            for name, v in servers.items():
                for level in v.get("open", []):
                    out.append(
                        f"| {title(name)} | {level['rate']:g} | {_f(level['p50_ms'])} | "
                        f"{_f(level['p99_ms'])} | {level['errors']} |"
                    )
            out.append("")
        if any("burst" in v for v in servers.values()):
            out += [
                "| server | burst | answered | shed (429/503) | failed | recovery s |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for name, v in servers.items():
                b = v["burst"]
                recovery = _f(b["recovery_s"], 2) if b["recovered"] == v["rounds"] else "not within 120 s"
                out.append(
                    f"| {title(name)} | {b['size']} | {b['answered']:g} | {b['shed']:g} | {b['failed']:g} | "
                    f"{recovery} |"
                )
            out.append("")
        ratio = s["ours_over_best_peer_images_per_s"]
        if ratio is not None and len(servers) > 1:
            out.append(f"yolor serve / best peer, images/s: **{ratio:.2f}x** (median of per-round ratios)")
        p99 = s["ours_over_best_peer_c1_p99"]
        if p99 is not None and len(servers) > 1:
            out.append(f"yolor serve / best peer, p99 at concurrency 1: **{p99:.2f}** (lower is better)")
        for name, why in s["skipped"].items():
            out.append(f"{title(name)} not measured: {why}")
        out.append("")
    return "\n".join(out)


def plot(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """images/s per regime and server (regimes with a closed loop), one bar group per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in summaries if any("images_per_s" in v for v in s["servers"].values())]
    if not shown:
        return
    names = list(dict.fromkeys(n for s in shown for n in s["servers"]))
    fig, ax = plt.subplots(figsize=(3 + 2.2 * len(shown), 4.5), constrained_layout=True)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [s["servers"].get(name, {}).get("images_per_s") or 0 for s in shown]
        ax.bar([k + i * width for k in range(len(shown))], values, width, label=title(name))
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(shown))], [s["regime"] for s in shown])
    ax.set(ylabel="images/s (best closed-loop level, median of rounds)", title="yolor serve and its peers")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
