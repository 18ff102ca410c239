"""`yolor bench peers` pieces that need no peer: the detection check, the summaries and ratios, the
thread layouts, the peer work beside the server's own answer."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest

from bench.peers.limits import layouts
from bench.peers.measure import ClosedLevel, Mismatch, Run, compare
from bench.peers.regimes import REGIMES
from bench.peers.registry import PEERS
from bench.peers.report import markdown, regime_summary
from bench.peers.run import OURS, RegimeRuns
from bench.peers.venvs import requirements
from bench.rate_load import BurstResult
from bench.stats import Latency
from tests.support.app import files, running

pytestmark = pytest.mark.unit


def det(box, score=0.9, class_id=1):
    return {"box": box, "score": score, "class_id": class_id, "class_name": "x"}


def test_compare_allows_last_bit_noise_and_nothing_more():
    ours = [[det([1, 2, 30, 40]), det([50, 50, 60, 70], 0.5, 2)], []]
    compare(ours, [[det([1.2, 2, 30, 40.3]), det([50, 50, 60, 70], 0.5015, 2)], []])
    with pytest.raises(Mismatch, match=r"image 0: boxes differ by 0\.800"):
        compare(ours, [[det([1.8, 2, 30, 40]), det([50, 50, 60, 70], 0.5, 2)], []])
    with pytest.raises(Mismatch, match="scores"):
        compare(ours, [[det([1, 2, 30, 40], 0.8), det([50, 50, 60, 70], 0.5, 2)], []])
    with pytest.raises(Mismatch, match="image 1: classes"):
        compare(ours, [ours[0], [det([1, 2, 3, 4])]])
    with pytest.raises(Mismatch, match="classes"):
        compare(ours, [ours[0][:1], []])


def level(concurrency, images_per_s, p99=50.0):
    return ClosedLevel(concurrency, images_per_s, Latency(10, 20, p99, 12), {}, 15.0)


def test_summaries_take_each_servers_best_level_and_the_median_of_per_round_ratios():
    regime = REGIMES["cpu-demo"]
    runs = RegimeRuns(regime, [OURS, "litserve", "bentoml"])
    # round 0: ours 100 vs best peer 80 (1.25); round 1: 90 vs 100 (0.9); round 2: 120 vs 100 (1.2)
    table = {OURS: (100, 90, 120), "litserve": (80, 100, 60), "bentoml": (50, 40, 100)}
    for r in range(3):
        for server, values in table.items():
            run = Run(server, r, closed=[level(8, values[r] / 2), level(16, values[r])], peak_pss_mb=300 + r)
            runs.runs.append(run)
    summary = regime_summary(runs)
    assert summary["ours_over_best_peer_images_per_s"] == pytest.approx(1.2)
    ours = summary["servers"][OURS]
    assert ours["images_per_s"] == 100 and ours["concurrency"] == 16 and ours["peak_pss_mb"] == 302
    text = markdown([summary])
    assert "| yolor serve | 100.0 | 16 |" in text and "| LitServe 0.2.19 | 80.0 | 16 |" in text
    assert "**1.20x**" in text


def test_latency_ratio_is_lower_is_better_and_a_burst_is_tabled():
    runs = RegimeRuns(REGIMES["latency"], [OURS, "litserve"])
    for r, (ours_p99, peer_p99) in enumerate([(30, 40), (35, 30), (20, 40)]):
        runs.runs.append(Run(OURS, r, closed=[level(1, 50, ours_p99)]))
        runs.runs.append(Run("litserve", r, closed=[level(1, 40, peer_p99)]))
    assert regime_summary(runs)["ours_over_best_peer_c1_p99"] == pytest.approx(0.75)

    overload = RegimeRuns(REGIMES["overload"], [OURS])
    b = BurstResult(1000, 300, 700, 0, {}, 4.0, 12.0, 2.5)
    overload.runs.append(Run(OURS, 0, burst=b))
    assert "| yolor serve | 1000 | 300 | 700 | 0 | 2.50 |" in markdown([regime_summary(overload)])


def test_layouts_fill_the_cores():
    assert layouts(2) == [(1, 2), (2, 1)]
    assert layouts(4) == [(1, 4), (2, 2), (4, 1)]


def test_each_peer_venv_runs_the_projects_own_versions_of_the_shared_work():
    lines = requirements(PEERS["litserve"])
    assert f"onnxruntime=={version('onnxruntime')}" in lines and "litserve==0.2.19" in lines
    for peer in PEERS.values():
        assert peer.app.is_file(), peer.app


@pytest.mark.anyio
async def test_the_peer_work_answers_what_the_server_answers():
    """bench/peers/work.py (what every peer runs) against POST /detect of `yolor serve`'s own app."""
    import os

    from bench.peers.work import PeerConfig, Work
    from service.http.app import create_app
    from service.settings import DEMO_MODEL_DIR, Settings

    jpeg = (DEMO_MODEL_DIR / "sample.jpg").read_bytes()
    env = {"PEER_MODEL_DIR": str(DEMO_MODEL_DIR), "PEER_PORT": "0"}
    os.environ.update(env)
    try:
        (answer,) = Work(PeerConfig.from_env()).detect([jpeg])
    finally:
        for key in env:
            del os.environ[key]
    async with running(create_app(Settings(model_dir=DEMO_MODEL_DIR, device="cpu"))) as client:
        served = (await client.post("/detect", files=files(jpeg))).json()["results"][0]
    assert len(answer["detections"]) >= 5
    assert (answer["width"], answer["height"]) == (served["width"], served["height"])
    compare([served["detections"]], [answer["detections"]])
    json.dumps(answer)  # the body a peer sends
