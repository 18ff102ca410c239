"""`yolor bench bare`: batch sizes, the arithmetic of images/s and percentiles, and the command."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from bench.bare import (
    batch_sizes,
    bench_bare,
    bench_batch,
    compare_precisions,
    markdown_table,
    precision_table,
)
from bench.stats import Latency
from cli import main
from service.backends import FakeBackend
from service.settings import DEMO_MODEL_DIR

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("max_batch", "sizes"),
    [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (9, [1, 2, 4, 8, 9])],
)
def test_batch_sizes_are_powers_of_two_and_the_largest(max_batch, sizes):
    assert batch_sizes(max_batch) == sizes


class Timed:
    """A fake clock and a fake backend on it: each call takes `base + per_image * batch` seconds."""

    def __init__(self, base: float, per_image: float) -> None:
        self.now, self.base, self.per_image = 0.0, base, per_image
        self.backend = FakeBackend(self._infer, input_size=32, output_shape=(4, 6), max_batch_size=8)

    def clock(self) -> float:
        return self.now

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.now += self.base + self.per_image * len(batch)
        return np.zeros((len(batch), 4, 6), np.float32)


def test_images_per_second_and_latency_follow_the_call_time():
    timed = Timed(base=0.010, per_image=0.005)
    (one, eight) = bench_bare(timed.backend, [1, 8], min_seconds=0.5, min_calls=5, warmup_calls=2,
                              clock=timed.clock)  # fmt: skip
    # batch 1: 15 ms a call -> 66.7 images/s; batch 8: 50 ms a call -> 160 images/s
    assert one.images_per_s == pytest.approx(1 / 0.015) and eight.images_per_s == pytest.approx(8 / 0.050)
    assert one.latency.p50_ms == pytest.approx(15.0) and eight.latency.p99_ms == pytest.approx(50.0)
    assert one.calls == 34 and eight.calls == 10  # until 0.5 s measured (warm-up calls not counted)
    assert timed.backend.batch_sizes == [1] * (2 + 34) + [8] * (2 + 10)


def test_at_least_min_calls_even_when_slow():
    timed = Timed(base=1.0, per_image=0.0)
    result = bench_batch(timed.backend, 2, min_seconds=0.1, min_calls=4, warmup_calls=0, clock=timed.clock)
    assert result.calls == 4 and result.seconds == pytest.approx(4.0)


def test_latency_percentiles_match_a_brute_force_median_and_mean():
    seconds = list(np.random.default_rng(0).random(101))
    lat = Latency.of(seconds)
    assert lat.p50_ms == pytest.approx(statistics.median(seconds) * 1000)
    assert lat.mean_ms == pytest.approx(statistics.fmean(seconds) * 1000)
    assert lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= max(seconds) * 1000
    with pytest.raises(ValueError):
        Latency.of([])


def test_the_markdown_table_has_a_row_per_batch_size():
    timed = Timed(base=0.01, per_image=0.0)
    results = bench_bare(timed.backend, [1, 2], min_seconds=0.05, clock=timed.clock)
    rows = markdown_table(results).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| 1 | 100.0 |") and rows[3].startswith("| 2 | 200.0 |")


def test_yolor_bench_bare_on_the_demo_model(tmp_path, capsys):
    assert main(["bench", "bare", str(DEMO_MODEL_DIR), "--seconds", "0.05", "--max-batch", "4",
                 "--device", "cpu", "--out", str(tmp_path)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "bare.json").read_text())
    assert report["model"]["arch"] == "yolor_csp" and report["backend"]["name"] == "onnxruntime"
    assert [r["batch_size"] for r in report["results"]] == [1, 2, 4]
    for r in report["results"]:
        assert r["images_per_s"] == pytest.approx(r["batch_size"] * r["calls"] / r["seconds"])
        assert 0 < r["latency"]["p50_ms"] <= r["latency"]["p99_ms"] and r["cpu_ms_per_image"] > 0
    table = capsys.readouterr().out
    assert table.count("\n") == 2 + 3 and (tmp_path / "bare.md").read_text() == table


def test_yolor_bench_bare_runs_on_a_serve_only_install(tmp_path):
    """`bench bare` needs the serve extra only: no aiohttp (the load generator's), no matplotlib."""
    script = (
        "import sys\n"
        "for name in ('aiohttp', 'matplotlib', 'torch'):\n"
        "    sys.modules[name] = None\n"
        "from cli import main\n"
        f"sys.exit(main(['bench', 'bare', {str(DEMO_MODEL_DIR)!r}, '--seconds', '0.05', '--max-batch', '2',"
        f" '--device', 'cpu', '--out', {str(tmp_path)!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert [r["batch_size"] for r in json.loads((tmp_path / "bare.json").read_text())["results"]] == [1, 2]


def test_cpu_time_per_image_is_the_cpu_clock_over_the_images():
    timed = Timed(base=0.010, per_image=0.005)  # the CPU clock is the same fake clock: 1 core busy
    result = bench_batch(timed.backend, 4, min_seconds=0.2, warmup_calls=1, clock=timed.clock,
                         cpu_clock=timed.clock)  # fmt: skip
    assert result.cpu_ms_per_image == pytest.approx((10 + 5 * 4) / 4)


def test_concurrent_callers_as_many_as_the_backend_runs_at_once():
    def sleepy(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.05)  # long beside scheduling noise on a loaded 2-core machine (0.02 s flaked in CI)
        return np.zeros((len(batch), 4, 6), np.float32)

    speeds = {}
    for concurrency in (1, 2):
        backend = FakeBackend(sleepy, input_size=32, output_shape=(4, 6), concurrency=concurrency)
        result = bench_batch(backend, 2, min_seconds=0.4, warmup_calls=1)
        assert result.callers == concurrency and result.latency.p50_ms >= 50
        speeds[concurrency] = result.images_per_s
    # sleeping calls overlap: ~2x with two callers; one caller at a time would stay near 1x
    assert speeds[1] <= 2 / 0.05 and speeds[2] > 1.4 * speeds[1]


def test_a_batch_larger_than_the_model_allows_is_a_user_error(caplog):
    assert main(["bench", "bare", str(DEMO_MODEL_DIR), "--max-batch", "64", "--device", "cpu"]) == 2
    assert "max batch 64" in caplog.text


def test_two_precisions_are_measured_back_to_back_per_batch_size():
    """A backend twice as fast per image: its latency ratio per batch size, from a shared fake clock."""
    base = Timed(base=0.010, per_image=0.010)

    def infer_other(batch: np.ndarray) -> np.ndarray:
        base.now += 0.010 + 0.004 * len(batch)  # the same fake clock
        return np.zeros((len(batch), 4, 6), np.float32)

    faster = FakeBackend(infer_other, input_size=32, output_shape=(4, 6), max_batch_size=8)
    order: list[str] = []
    pairs = compare_precisions(base.backend, faster, [1, 8], min_seconds=0.2, clock=base.clock,
                               progress=lambda p: order.append(f"b{p.batch_size}"))  # fmt: skip
    assert [p.latency_ratio for p in pairs] == pytest.approx([0.014 / 0.020, 0.042 / 0.090])
    assert order == ["b1", "b8"] and base.backend.batch_sizes[-1] == 8 and faster.batch_sizes[0] == 1
    table = precision_table(pairs, "fp32", "int8").splitlines()
    assert table[0].endswith("| int8 / fp32 latency |") and table[3].endswith("| 0.467 |")


def test_yolor_bench_bare_against_another_precision_needs_its_artifact(caplog):
    """The demo model ships no INT8 export: a clear user error, not a traceback."""
    args = ["bench", "bare", str(DEMO_MODEL_DIR), "--seconds", "0.05", "--device", "cpu", "--against", "int8"]
    code = main(args)
    assert code == 2 and "lists no 'onnx_int8' artifact" in caplog.text
