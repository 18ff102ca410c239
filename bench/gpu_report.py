"""The record of `yolor bench gpu`: results by stage, rewritten to JSON and Markdown after each stage,
and the time budget that decides whether a stage still starts.

No torch, numpy or pydantic: the report of a recorded run can be read and rendered anywhere.

A stage's result is a dict; its measured rows (`rows`, each `BatchResult.to_dict()` with `what`,
optionally `copy_output` and the GPU's `peak_allocated_gib`) make the table. A stage that would
start with less than its need of the budget left is recorded as `{"skipped": why}`; one that raises
as `{"error": ..., "traceback": ...}`, and the next stage runs.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("yolor")

# What the torch backend should reach: the P6 net at its own size, batch 32, on one H200.
TARGET = {"arch": "yolor-p6", "size": 1280, "batch": 32, "images_per_s": 800.0}
JSON_NAME, MARKDOWN_NAME = "gpu-bench.json", "gpu-bench.md"
TARGET_STAGES = ("backend", "chunks", "compile")  # the ways the server could run the backend

Stage = dict[str, Any]


class GpuReport:
    """Results by stage, written to `out` after each; stages start while the budget lasts."""

    def __init__(
        self,
        out: Path,
        budget_s: float,
        args: dict[str, Any],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out, self.budget_s, self._clock = out, budget_s, clock
        self._start = clock()
        self.data: dict[str, Any] = {
            "what": "yolor bench gpu",
            "args": {k: str(v) for k, v in args.items()},
            "target": TARGET,
            "stages": {},
        }
        out.mkdir(parents=True, exist_ok=True)

    @property
    def stages(self) -> dict[str, Stage]:
        stages: dict[str, Stage] = self.data["stages"]
        return stages

    def left(self) -> float:
        """Seconds of the budget not yet spent."""
        return self.budget_s - (self._clock() - self._start)

    def stage(self, name: str, need_s: float, run: Callable[[], Stage]) -> Stage | None:
        """`run()`'s result recorded as stage `name`, or None when less than `need_s` of the budget is
        left (then recorded as skipped). An exception from `run` is recorded as the stage's error."""
        if self.left() < need_s:
            why = f"time budget: {self.left():.0f} s left, needs {need_s:.0f}"
            log.info("[%s] skipped: %s", name, why)
            self.record(name, {"skipped": why})
            return None
        log.info("[%s] ... (%.0f s of budget left)", name, self.left())
        started = self._clock()
        try:
            result = run()
        except Exception as e:  # the next stages still run; the record says what failed
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            log.error("[%s] failed: %s\n%s", name, result["error"], result["traceback"])
        result["stage_s"] = round(self._clock() - started, 1)
        self.record(name, result)
        log.info("[%s] done in %s s", name, result["stage_s"])
        return result

    def record(self, name: str, result: Stage) -> None:
        """Set stage `name`'s result and rewrite the files (a killed run keeps what it measured)."""
        self.stages[name] = result
        self.write()

    def completed(self, name: str) -> bool:
        """Whether stage `name` ran to its end (not missing, skipped or failed)."""
        stage = self.stages.get(name)
        return stage is not None and "skipped" not in stage and "error" not in stage

    def write(self) -> None:
        self.data["elapsed_s"] = round(self._clock() - self._start, 1)
        (self.out / JSON_NAME).write_text(json.dumps(self.data, indent=2) + "\n")
        (self.out / MARKDOWN_NAME).write_text(markdown(self.data))


def best_target_row(data: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest row at the target's batch size among the ways the server could run the backend."""
    rows = [
        row
        for name in TARGET_STAGES
        for row in data["stages"].get(name, {}).get("rows", [])
        if row["batch_size"] == data["target"]["batch"]
    ]
    return max(rows, key=lambda r: r["images_per_s"], default=None)


def markdown(data: dict[str, Any]) -> str:
    """The report in Markdown: the setting, the target's verdict, the checks, one table of every
    measured row, then the skipped and failed stages."""
    stages = data["stages"]
    lines = [*_heading(data), *_checks(stages), "", *_table(stages)]
    for name, stage in stages.items():
        if "skipped" in stage or "error" in stage:
            lines.append(f"\n{name}: {stage.get('skipped') or stage.get('error')}")
    return "\n".join(lines) + "\n"


def _heading(data: dict[str, Any]) -> list[str]:
    e, args = data["stages"].get("env", {}), data["args"]
    lines = [
        "# YOLOR on one GPU: the torch backend beside eager PyTorch",
        "",
        f"GPU {e.get('gpu', '?')} (sm {e.get('capability', '?')}, {e.get('sms', '?')} SMs), torch "
        f"{e.get('torch', '?')}, CUDA {e.get('cuda', '?')}, cuDNN {e.get('cudnn', '?')}; "
        f"{args.get('arch')} at {args.get('size')} px, random weights. "
        f"Written by yolor bench gpu in {data.get('elapsed_s', '?')} s.",
        "",
    ]
    best, t = best_target_row(data), data["target"]
    if best is not None:
        verdict = "met" if best["images_per_s"] >= t["images_per_s"] else "NOT met"
        lines += [
            f"Target {t['images_per_s']:.0f} images/s for {t['arch']} at {t['size']}, batch {t['batch']}: "
            f"best backend row {best['images_per_s']:.0f} images/s ({_what(best)}): **{verdict}**.",
            "",
        ]
    return lines


def _checks(stages: dict[str, Stage]) -> list[str]:
    lines = [
        f"- {name}: {'passed' if stages[name]['passed'] else 'FAILED'}"
        for name in ("pipeline_check", "numerics")
        if "passed" in stages.get(name, {})
    ]
    tr = stages.get("transfers", {})
    if "h2d_pinned_gbps" in tr:
        lines.append(
            f"- transfers (GB/s): host->pinned {tr['host_to_pinned_gbps']:.1f}, H2D pinned "
            f"{tr['h2d_pinned_gbps']:.1f}, D2H pinned {tr['d2h_pinned_gbps']:.1f}, pinned->new array "
            f"{tr['pinned_to_new_array_gbps']:.1f}, H2D pageable {tr['h2d_pageable_gbps']:.1f}"
        )
    m = stages.get("model", {})
    if "conv_gflop_per_image" in m:
        gflop = m["conv_gflop_per_image"]
        lines.append(f"- model: {m['params_m']:.1f} M params, {gflop:.0f} conv GFLOP/image")
    return lines


def _table(stages: dict[str, Stage]) -> list[str]:
    lines = [
        "| stage | what | batch | images/s | p50 ms | p90 ms | p99 ms | calls | peak GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, stage in stages.items():
        for row in stage.get("rows", []):
            lat = row["latency"]
            lines.append(
                f"| {name} | {_what(row)} | {row['batch_size']} | {row['images_per_s']:.0f} | "
                f"{lat['p50_ms']:.1f} | {lat['p90_ms']:.1f} | {lat['p99_ms']:.1f} | {row['calls']} | "
                f"{row.get('peak_allocated_gib', math.nan):.1f} |"
            )
    return lines


def _what(row: dict[str, Any]) -> str:
    return str(row["what"]) + ("" if row.get("copy_output", True) else ", no output copy")
