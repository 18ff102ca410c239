"""`yolor bench serve`: the load generator against a real server, the server's counters, the ratios."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from bench.images import load_images, sample_jpegs
from bench.limits import Comparison, CpuLimit, Round
from bench.scrape import ServerCounters
from bench.serve import concurrency_levels, sweep
from cli import main
from service.core.metrics import Metrics
from tests.support.app import encode, fake_app, serving, solid, topk_rows
from tests.support.model_files import TOP_K


@pytest.mark.parametrize(
    ("max_batch", "up_to", "levels"),
    [
        (8, None, [1, 2, 4, 8, 16, 32]),
        (6, None, [1, 2, 4, 8, 16, 24]),
        (1, None, [1, 2, 4]),
        (8, 3, [1, 2, 3]),
    ],
)
def test_concurrency_levels_double_up_to_four_times_the_max_batch(max_batch, up_to, levels):
    assert concurrency_levels(max_batch, up_to) == levels


def test_server_counters_are_read_from_the_real_exposition_and_subtracted():
    metrics = Metrics()
    small, big = metrics.for_model("small", 1), metrics.for_model("big", 2)  # summed over the models
    before = ServerCounters.parse(metrics.exposition()[0].decode())
    for model, size in ((small, 1), (small, 4), (big, 4), (big, 8)):
        model.batch_size.observe(size)
    small.images.inc(10)
    big.images.inc(7)
    after = ServerCounters.parse(metrics.exposition()[0].decode())
    window = after.minus(before)
    assert window.images == 17 and window.batches == 4 and window.mean_batch == pytest.approx(17 / 4)
    assert window.batch_histogram() == {"1": 1, "4": 2, "7-8": 1}  # the histogram's buckets: ..., 3, 4, 6, 8
    assert before.cpu_seconds is not None and window.cpu_seconds is not None and window.cpu_seconds >= 0
    assert ServerCounters.parse("").mean_batch is None


def test_the_ratios_are_medians_of_the_rounds():
    rounds = [
        Round(bare_images_per_s=100, bare_cpu_ms_per_image=16, served_images_per_s=90, bare_p50_ms_b1=10,
              served_p50_ms_c1=13),
        Round(bare_images_per_s=50, bare_cpu_ms_per_image=30, served_images_per_s=48, bare_p50_ms_b1=20,
              served_p50_ms_c1=30),
        Round(bare_images_per_s=120, bare_cpu_ms_per_image=14, served_images_per_s=60, bare_p50_ms_b1=9,
              served_p50_ms_c1=12, served_cpu_ms_per_image=20, client_cpu_ms_per_image=2),
    ]  # fmt: skip
    c = Comparison(max_batch=8, concurrency=32, cores=2, preprocess_cpu_ms=4.0, rounds=rounds)
    assert c.served_over_bare == pytest.approx(0.9)  # of 0.9, 0.96, 0.5
    limits = [2000 / (16 + 4), 2000 / (30 + 4), 2000 / (14 + 4)]
    assert c.limit_images_per_s == pytest.approx(np.median(limits))
    assert c.served_over_limit == pytest.approx(np.median([90 / limits[0], 48 / limits[1], 60 / limits[2]]))
    assert c.p50_overhead_ms == pytest.approx(3.0)  # of 3, 10, 3
    assert CpuLimit(2, 16, 4).images_per_s == pytest.approx(100.0)
    assert json.loads(json.dumps(c.to_dict()))["served_over_bare"] == pytest.approx(0.9)
    assert c.cores_busy == pytest.approx(60 * 22 / 1000 / 2)  # only the round that measured CPU
    expected = "server 20.00 ms + load generator 2.00 ms (the limit counts 20.00 ms); cores busy 66%"
    assert expected in c.lines()[-1]


def test_sample_photos_and_image_folders(tmp_path):
    photos = sample_jpegs()
    assert len(photos) == 6 and all(p.startswith(b"\xff\xd8") for p in photos)
    (tmp_path / "a.jpg").write_bytes(photos[0])
    (tmp_path / "b.png").write_bytes(encode(solid(20, 30, (1, 2, 3))))
    (tmp_path / "notes.txt").write_text("not an image")
    assert load_images([tmp_path]) == [photos[0], (tmp_path / "b.png").read_bytes()]
    with pytest.raises(ValueError, match=r"notes\.txt"):
        load_images([tmp_path / "notes.txt"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_images([empty])


def _run_sweep(url: str, levels: list[int], seconds: float = 0.6):
    jpegs = [encode(solid(48, 64, (200, 10, 10)), ".jpg"), encode(solid(40, 40, (10, 200, 10)), ".jpg")]
    return asyncio.run(sweep(url, jpegs, levels, seconds=seconds, warmup_s=0.2))


def test_a_sweep_counts_answers_batches_and_cpu_from_a_real_server(tmp_path):
    app, made = fake_app(tmp_path, topk_rows([[8, 8, 40, 40, 0.9, 0]]), max_batch_size=4)
    with serving(app) as url:
        one, eight = _run_sweep(url, [1, 8])
    for level in (one, eight):
        assert level.requests > 0 and level.errors == {}
        assert level.images_per_s == pytest.approx(level.requests / level.seconds)
        assert level.latency is not None and level.latency.p50_ms > 0
        assert set(level.stages_ms) == {"preprocess", "queue", "inference", "postprocess", "other"}
        assert level.server_cpu_ms_per_image is not None and level.server_cpu_ms_per_image > 0
    assert one.mean_batch == pytest.approx(1.0)  # one request at a time: every batch is one image
    assert eight.mean_batch is not None and 1.0 < eight.mean_batch <= 4.0
    assert max(made["backend"].batch_sizes) <= 4


def test_a_sweep_counts_failures_by_status(tmp_path):
    def broken(batch: np.ndarray) -> np.ndarray:  # on the test images, not on the grey warm-up
        if batch.max() > 0.6:
            raise RuntimeError("the model is broken")
        return np.zeros((len(batch), TOP_K, 6), np.float32)

    app, _ = fake_app(tmp_path, broken)
    with serving(app) as url:
        (level,) = _run_sweep(url, [2], seconds=0.3)
    assert level.requests == 0 and level.latency is None
    assert set(level.errors) == {"500"} and level.errors["500"] > 0


@pytest.mark.slow
def test_yolor_bench_serve_on_the_demo_model(tmp_path, capsys):
    assert main(["bench", "serve", "--device", "cpu", "--seconds", "0.5", "--warmup", "0.2", "--bare-seconds",
                 "0.05", "--concurrency", "1,16", "--rounds", "1", "--round-seconds", "0.3", "--unbatched",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "serve.json").read_text())
    batched, unbatched = report["sweeps"]
    assert unbatched["name"] == "unbatched" and unbatched["served"]["max_batch_size"] == 1
    assert [lv["concurrency"] for lv in unbatched["levels"]] == [1, 16]  # the batched server's levels
    assert all(lv["mean_batch"] == 1.0 for lv in unbatched["levels"])
    assert batched["served"]["arch"] == "yolor_csp" and batched["served"]["max_batch_size"] == 8
    assert [lv["concurrency"] for lv in batched["levels"]] == [1, 16]
    assert all(lv["requests"] > 0 and lv["errors"] == {} for lv in batched["levels"])
    assert [b["batch_size"] for b in report["bare"]] == [1, 2, 4, 8]
    comparison = report["comparison"]
    assert comparison["concurrency"] == 16 and len(comparison["rounds"]) == 1
    assert comparison["served_over_bare"] > 0 and comparison["served_over_limit"] > 0
    assert report["limit"]["preprocess_cpu_ms"] > 0 and report["limit"]["inference_cpu_ms"] > 0
    out = capsys.readouterr().out
    assert "served/bare at max batch 8" in out and (tmp_path / "serve.md").read_text() == out.lstrip("\n")
    assert (tmp_path / "serve.png").read_bytes().startswith(b"\x89PNG")


def test_unbatched_needs_a_model_folder_not_a_url(caplog):
    assert main(["bench", "serve", "http://127.0.0.1:9", "--unbatched"]) == 2
    assert "--unbatched starts its own servers" in caplog.text
