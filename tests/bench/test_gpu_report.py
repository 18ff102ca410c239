"""`yolor bench gpu`'s record, on the CPU: the Markdown written from a recorded run, the target's
verdict, and the budget that skips stages, with the files rewritten after every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_report import JSON_NAME, MARKDOWN_NAME, TARGET, GpuReport, best_target_row, markdown

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _row(what: str, batch: int, images_per_s: float, *, copy_output: bool | None = None) -> dict:
    """A row as `bench.gpu_measure` records it: BatchResult.to_dict() and the GPU's peak memory."""
    row = {
        "what": what,
        "batch_size": batch,
        "calls": 50,
        "callers": 1,
        "seconds": 2.0,
        "images_per_s": images_per_s,
        "latency": {"p50_ms": 1000 * batch / images_per_s, "p90_ms": 41.25, "p99_ms": 47.5, "mean_ms": 40.0},
        "cpu_ms_per_image": 0.5,
        "peak_allocated_gib": 12.34,
        "peak_reserved_gib": 14.0,
    }
    return row if copy_output is None else {**row, "copy_output": copy_output}


def _recorded(backend_best: float = 850.0) -> dict:
    """A run as written to gpu-bench.json (values invented, layout as recorded)."""
    return {
        "what": "yolor bench gpu",
        "args": {"arch": "yolor-p6", "size": "1280"},
        "target": TARGET,
        "elapsed_s": 201.5,
        "stages": {
            "env": {
                "gpu": "NVIDIA H200",
                "capability": "9.0",
                "sms": 132,
                "torch": "2.9.0",
                "cuda": "12.8",
                "cudnn": 91002,
                "stage_s": 0.4,
            },
            "model": {"params_m": 37.2, "conv_gflop_per_image": 231.6, "output_rows": 3, "stage_s": 9.0},
            "transfers": {
                "host_to_pinned_gbps": 9.87,
                "h2d_pinned_gbps": 51.2,
                "d2h_pinned_gbps": 50.04,
                "pinned_to_new_array_gbps": 7.5,
                "h2d_pageable_gbps": 12.0,
            },
            "pipeline_check": {"passed": True, "checks": []},
            "numerics": {"passed": False, "rel_error": 0.5},
            "backend": {
                "rows": [
                    _row("backend, graphs 1..8", 1, 100.0, copy_output=True),
                    _row("backend, graphs 1..8", 32, 700.0, copy_output=True),
                    _row("backend, graphs 1..8", 32, backend_best, copy_output=False),
                ]
            },
            "device_only": {"rows": [_row("fused fp16 channels_last, CUDA graph", 32, 2000.0)]},
            "chunks": {"skipped": "time budget: 12 s left, needs 45"},
            "also": {"error": "RuntimeError: CUDA out of memory", "traceback": "..."},
        },
    }


def test_the_markdown_shows_the_setting_the_checks_every_row_and_what_did_not_run():
    lines = markdown(_recorded()).splitlines()
    assert lines[0] == "# YOLOR on one GPU: the torch backend beside eager PyTorch"
    assert lines[2] == (
        "GPU NVIDIA H200 (sm 9.0, 132 SMs), torch 2.9.0, CUDA 12.8, cuDNN 91002; yolor-p6 at 1280 px, "
        "random weights. Written by yolor bench gpu in 201.5 s."
    )
    assert "- pipeline_check: passed" in lines and "- numerics: FAILED" in lines
    assert (
        "- transfers (GB/s): host->pinned 9.9, H2D pinned 51.2, D2H pinned 50.0, pinned->new array 7.5, "
        "H2D pageable 12.0"
    ) in lines
    assert "- model: 37.2 M params, 232 conv GFLOP/image" in lines
    table = [line for line in lines if line.startswith("| ")]
    assert table[2:] == [  # in stage order, the output copy named when off
        "| backend | backend, graphs 1..8 | 1 | 100 | 10.0 | 41.2 | 47.5 | 50 | 12.3 |",
        "| backend | backend, graphs 1..8 | 32 | 700 | 45.7 | 41.2 | 47.5 | 50 | 12.3 |",
        "| backend | backend, graphs 1..8, no output copy | 32 | 850 | 37.6 | 41.2 | 47.5 | 50 | 12.3 |",
        "| device_only | fused fp16 channels_last, CUDA graph | 32 | 2000 | 16.0 | 41.2 | 47.5 | 50 | 12.3 |",
    ]
    assert lines[-3:] == [
        "chunks: time budget: 12 s left, needs 45",
        "",
        "also: RuntimeError: CUDA out of memory",
    ]


@pytest.mark.parametrize(("best", "verdict"), [(850.0, "met"), (799.0, "NOT met")])
def test_the_verdict_is_the_best_backend_row_at_the_target_batch_against_the_target(best, verdict):
    """device_only's 2000 images/s is the GPU alone, not a way to serve: it must not count."""
    data = _recorded(backend_best=best)
    assert best_target_row(data) == data["stages"]["backend"]["rows"][2]
    assert (
        f"Target 800 images/s for yolor-p6 at 1280, batch 32: best backend row {best:.0f} images/s "
        f"(backend, graphs 1..8, no output copy): **{verdict}**."
    ) in markdown(data).splitlines()


def test_without_a_measured_row_there_is_no_verdict_and_unknowns_show_as_such():
    data = {"args": {"arch": "yolor-p6", "size": "1280"}, "target": TARGET, "stages": {}}
    text = markdown(data)
    assert best_target_row(data) is None and "Target" not in text
    assert "GPU ? (sm ?, ? SMs), torch ?" in text and "in ? s." in text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stages_run_while_the_budget_lasts_and_the_files_are_rewritten_after_each(tmp_path):
    clock, out = Clock(), tmp_path / "out"
    report = GpuReport(out, 100.0, {"arch": "yolor-p6", "budget_s": 100.0}, clock=clock)
    seen_on_disk = []

    def first() -> dict:
        clock.now += 50
        return {"rows": [_row("backend", 1, 10.0)]}

    def failing() -> dict:
        seen_on_disk.append(json.loads((out / JSON_NAME).read_text())["stages"])
        clock.now += 5
        raise RuntimeError("boom")

    assert report.stage("first", 10, first) == {"rows": [_row("backend", 1, 10.0)], "stage_s": 50.0}
    assert report.stage("failing", 0, failing) is not None
    assert report.stage("too_long", 46, lambda: pytest.fail("started without the time it needs")) is None
    assert report.stage("fits", 45, lambda: {"ok": True}) == {"ok": True, "stage_s": 0.0}

    assert list(seen_on_disk[0]) == ["first"]  # written before the next stage started
    stages = report.stages
    assert stages["failing"]["error"] == "RuntimeError: boom" and "boom" in stages["failing"]["traceback"]
    assert stages["failing"]["stage_s"] == 5.0
    assert stages["too_long"] == {"skipped": "time budget: 45 s left, needs 46"}
    assert [report.completed(n) for n in ("first", "failing", "too_long", "fits", "never")] == [
        True, False, False, True, False,
    ]  # fmt: skip
    on_disk = json.loads((out / JSON_NAME).read_text())
    assert on_disk == report.data and on_disk["elapsed_s"] == 55.0
    assert on_disk["args"] == {"arch": "yolor-p6", "budget_s": "100.0"}
    assert (out / MARKDOWN_NAME).read_text() == markdown(report.data)
    assert "too_long: time budget: 45 s left, needs 46" in (out / MARKDOWN_NAME).read_text()


def test_a_spent_budget_skips_even_a_stage_that_needs_nothing(tmp_path):
    clock = Clock()
    report = GpuReport(tmp_path, 10.0, {}, clock=clock)
    clock.now += 10.5
    assert report.left() == -0.5
    assert report.stage("env", 0, dict) is None and not report.completed("env")


def test_the_report_needs_neither_torch_nor_numpy_nor_pydantic():
    script = (
        "import sys\n"
        "for name in ('torch', 'numpy', 'pydantic'):\n"
        "    sys.modules[name] = None\n"
        "from bench.gpu_report import TARGET, markdown\n"
        "print(markdown({'args': {}, 'target': TARGET, 'stages': {}}).splitlines()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "# YOLOR on one GPU: the torch backend beside eager PyTorch\n"
