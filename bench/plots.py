"""The PNG of `yolor bench serve --out`: throughput vs latency per concurrency, and where the time goes.

Left: images/s against p50 (solid) and p99 (dashed) latency, one point per concurrency (labelled),
batched and unbatched servers; vertical lines at the bare backend's images/s at the max batch and
at the CPU limit. Right: the mean time per request in each server stage, stacked, per concurrency
(batched server); "other" is HTTP, JSON and the event loop (client latency minus the server's total).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.serve_report import ServeReport

STACK = ("preprocess", "queue", "inference", "postprocess", "other")


def plot_serve(report: ServeReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for sweep, colour in zip(report.sweeps, ("tab:blue", "tab:orange"), strict=False):
        done = [r for r in sweep.results if r.latency is not None]
        x = [r.images_per_s for r in done]
        left.plot(
            x, [r.latency.p50_ms for r in done if r.latency], "o-", color=colour, label=f"{sweep.name} p50"
        )
        left.plot(x, [r.latency.p99_ms for r in done if r.latency], "s--", color=colour, alpha=0.6,
                  label=f"{sweep.name} p99")  # fmt: skip
        for r in done:
            assert r.latency is not None
            point = (r.images_per_s, r.latency.p50_ms)
            left.annotate(f"c={r.concurrency}", point, textcoords="offset points", xytext=(4, 4), fontsize=8,
                          color=colour)  # fmt: skip
    if report.bare:
        top = report.bare[-1]
        left.axvline(top.images_per_s, color="gray", ls=":", label=f"bare, batch {top.batch_size}")
    if report.limit is not None:
        left.axvline(report.limit.images_per_s, color="black", ls="-.", label="CPU limit")
    model = report.sweeps[0].model
    left.set(xlabel="images/s", ylabel="latency (ms)", yscale="log",
             title=f"{model.arch} {model.input_size} px, {model.backend} {model.precision}")  # fmt: skip
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    left.yaxis.set_major_formatter(plain)
    left.yaxis.set_minor_formatter(plain)
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)

    results = report.sweeps[0].results
    positions = list(range(len(results)))
    bottom = [0.0] * len(results)
    for stage in STACK:
        heights = [max(0.0, r.stages_ms.get(stage, 0.0)) for r in results]
        right.bar(positions, heights, bottom=bottom, label=stage)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    right.set_xticks(positions, [str(r.concurrency) for r in results])
    right.set(
        xlabel="concurrency", ylabel="mean ms per request", title="where a request's time goes (batched)"
    )
    right.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
