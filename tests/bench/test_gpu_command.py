"""`yolor bench gpu` and benchmarks/gpu.sh on a machine without a GPU: the refusal (exit 2, one line,
no traceback), the device's way of running it (`python -m cli`, the repository on PYTHONPATH, no
pydantic or FastAPI), a run whose budget or model stage ends it early, and gpu.sh's log."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main

ROOT = Path(__file__).resolve().parents[2]

NO_GPU = "no CUDA GPU visible to torch"


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# On a GPU host these would measure for minutes instead of refusing or stopping early.
without_gpu = pytest.mark.skipif(_has_gpu(), reason="a CUDA GPU is visible: the bench would run")


def _cli(args: list[str], caplog) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="yolor"):
        status = main(args)
    return status, caplog.text


@without_gpu
@pytest.mark.unit
def test_without_a_gpu_the_command_refuses_before_writing_anything(tmp_path, caplog):
    pytest.importorskip("torch")
    status, text = _cli(["bench", "gpu", "--out", str(tmp_path / "out")], caplog)
    assert status == 2 and NO_GPU in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_the_served_folder_needs_a_workdir_to_stay_in(tmp_path, caplog):
    status, text = _cli(["bench", "gpu", "--model-dir", "--out", str(tmp_path)], caplog)
    assert status == 2 and "--workdir" in text


# As on the lent GPU: `python -m cli` from elsewhere, the repository on PYTHONPATH, and none of the
# server's packages (the import of any fails). Each command line in turn; their exit statuses printed.
DEVICE_RUN = """
import json, runpy, sys
for name in ("pydantic", "pydantic_settings", "fastapi", "starlette", "uvicorn", "aiohttp"):
    sys.modules[name] = None
import bench.gpu, bench.gpu_checks, bench.gpu_measure, bench.gpu_report, bench.host  # the whole gpu path
statuses = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["cli", *args]
    try:
        runpy.run_module("cli", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        statuses.append(e.code)
print(json.dumps(statuses))
"""


@pytest.mark.slow
@without_gpu
@pytest.mark.unit
def test_python_m_cli_bench_gpu_needs_neither_pydantic_nor_fastapi(tmp_path):
    pytest.importorskip("torch")
    commands = [
        ["bench", "gpu", "--out", str(tmp_path / "out")],
        ["bench", "gpu", "--model-dir", "--workdir", str(tmp_path)],
    ]
    done = subprocess.run([sys.executable, "-c", DEVICE_RUN, json.dumps(commands)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout) == [2, 2], done.stderr
    assert done.stderr.splitlines() == [
        f"error: {NO_GPU} {_torch_version()}: nothing to measure",
        "error: --model-dir needs pydantic: pip install 'yolor-serving[serve]'",
    ]


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


@pytest.fixture
def cudnn_restored(monkeypatch):
    """The bench turns cuDNN autotuning on for its process; put it back for the other tests."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)


@without_gpu
@pytest.mark.unit
def test_a_spent_budget_skips_every_stage_and_ends_after_the_model(tmp_path, cudnn_restored):
    from bench.gpu import GpuBenchConfig, run_gpu_bench

    config = GpuBenchConfig(budget_s=0, out=tmp_path / "out", workdir=tmp_path / "work")
    report = run_gpu_bench(config)
    recorded = json.loads((tmp_path / "out" / "gpu-bench.json").read_text())
    assert list(recorded["stages"]) == ["env", "model"]  # nothing measured without a model
    assert all(s["skipped"].startswith("time budget: ") for s in recorded["stages"].values())
    assert recorded["args"]["budget_s"] == "0" and not report.completed("model")
    assert list((tmp_path / "work").iterdir()) == []  # no checkpoint written


@pytest.mark.unit
def test_the_command_exits_1_when_no_model_was_measured_and_prints_what_it_wrote(
    tmp_path, caplog, capsys, monkeypatch, cudnn_restored
):
    """torch.cuda.is_available faked (nothing else: with no budget no stage touches the GPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "out"
    status, text = _cli(
        ["bench", "gpu", "--budget-s", "0", "--out", str(out), "--workdir", str(tmp_path)], caplog
    )
    assert status == 1 and "no model to measure: time budget: " in text
    assert capsys.readouterr().out == "\n" + (out / "gpu-bench.md").read_text()
    assert json.loads((out / "gpu-bench.json").read_text())["args"]["budget_s"] == "0.0"


@without_gpu
@pytest.mark.model
def test_a_failed_model_stage_is_recorded_and_ends_the_run(tmp_path, cudnn_restored):
    """Here the model stage fails where it first needs the GPU (the conv count on CUDA): what it
    recorded stays, and no later stage runs on a model that is not there."""
    from bench.gpu import GpuBenchConfig, run_gpu_bench

    config = GpuBenchConfig(arch="yolor-ssss-s2d", size=64, out=tmp_path / "out", workdir=tmp_path / "work")
    report = run_gpu_bench(config)
    assert list(report.stages) == ["env", "model"] and not report.completed("model")
    assert "error" in report.stages["env"] and "error" in report.stages["model"]
    assert json.loads((tmp_path / "out" / "gpu-bench.json").read_text())["stages"] == report.stages
    assert (tmp_path / "work" / "checkpoint.pt").is_file()  # saved before the GPU was needed


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.unit
def test_gpu_sh_runs_the_command_and_waits_for_tee_to_write_the_last_line(tmp_path):
    """gpu.sh with a stand-in python (no GPU, no wheels: the bench 'fails' with 3 after writing its
    table, the served run and the tests are skipped) and a tee that starts 0.5 s late: the bench is
    `python -m cli bench gpu` without --model-dir (no wheels: no pydantic), the log ends with the
    table's last line once the script has returned, and the bench's status is kept."""
    bin_dir, out, work = tmp_path / "bin", tmp_path / "out", tmp_path / "work"
    bin_dir.mkdir()
    _executable(bin_dir / "tee", f'#!/usr/bin/env bash\nsleep 0.5\nexec {shutil.which("tee")} "$@"\n')
    python = bin_dir / "python"
    _executable(
        python,
        '#!/usr/bin/env bash\n[[ $1 == -c ]] && { echo "fake python"; exit 0; }\n'
        f'printf "%s\\n" "$@" >{tmp_path / "args"}\n'
        'printf "| stage | result |\\n| last | row |\\n" >"$OUT/gpu-bench.md"\nexit 3\n',
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "OUT": str(out),
        "PYTHON": str(python),
        "WORK": str(work),  # not /tmp/yolor-gpu
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,  # not a pipe: run() would then wait for tee too
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    log = (out / "gpu.log").read_text() if (out / "gpu.log").exists() else ""
    assert log.splitlines()[-1:] == ["| last | row |"], log
    assert "== yolor bench gpu exit 3" in log and done.returncode == 3
    assert (tmp_path / "args").read_text().splitlines() == [
        "-m", "cli", "bench", "gpu", "--budget-s", "200", "--out", str(out), "--workdir", str(work / "model"),
    ]  # fmt: skip
