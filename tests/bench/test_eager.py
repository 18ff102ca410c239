"""`yolor bench torch`: the three runners on a tiny net, and the command on a checkpoint."""

from __future__ import annotations

import json

import pytest

from tests.support.nets import IMG_SIZE, tiny_checkpoint

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

pytestmark = [pytest.mark.export, pytest.mark.slow]  # exports and times torch nets


def test_each_runner_is_measured_per_batch_size_and_the_speedup_is_their_ratio(tmp_path):
    import yolor
    from bench.eager import RUNNERS, compare

    model = yolor.load_model(tiny_checkpoint("yolor_csp", tmp_path / "tiny.pt"))
    threads = torch.get_num_threads()
    result = compare(model, input_size=IMG_SIZE["yolor_csp"], batch_sizes=[1, 2], threads=1, min_seconds=0.05)
    assert set(result.results) == set(RUNNERS) and result.threads == 1
    for rows in result.results.values():
        assert [r.batch_size for r in rows] == [1, 2] and all(
            r.calls >= 3 and r.images_per_s > 0 for r in rows
        )
    eager, onnx = result.results["eager"][1], result.results["onnxruntime"][1]
    assert result.speedup(2) == pytest.approx(onnx.images_per_s / eager.images_per_s)
    table = result.markdown().splitlines()
    assert (
        len(table) == 4 and table[3].startswith("| 2 |") and table[3].endswith(f"{result.speedup(2):.2f}x |")
    )
    assert torch.get_num_threads() == threads  # set to 1 for the measurement, then put back


def test_yolor_bench_torch_writes_its_report(tmp_path, capsys):
    from cli import main

    checkpoint = tiny_checkpoint("yolor_csp", tmp_path / "tiny.pt")
    assert main(["bench", "torch", str(checkpoint), "--img-size", "96", "--seconds", "0.05", "--threads", "1",
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "out" / "torch.json").read_text())
    assert report["arch"] == "yolor_csp" and report["input_size"] == 96
    assert [r["batch_size"] for r in report["results"]["eager"]] == [1]
    assert (tmp_path / "out" / "torch.md").read_text() == capsys.readouterr().out


def test_without_a_checkpoint_an_arch_is_needed(caplog):
    from cli import main

    assert main(["bench", "torch"]) == 2
    assert "--arch" in caplog.text
