"""Several models in one server, measured: a real `yolor serve --model-repository` (ONNX Runtime on
the CPU) with two different models, `small` (the demo model, 256 px) and `big` (the same checkpoint
exported at 640 px: about 6x the pixels), under steady load while a third model is loaded, a
version of `small` replaced and the others unloaded through Triton's repository API.

Phases (each PHASE_S long, 2 clients per model named, one 640x480 JPEG per request):
  1. `small` alone (big loaded, idle): its latency on its own;
  2. `small` beside `big` (2 clients each): its latency while the big model is busy: one model's
     queue must not starve the other's;
  3. under that load: load `extra` (a third model), load `small` again after `small/2` appeared
     (version 2 replaces 1), stop `big`'s clients and unload `big`, unload `extra`; then load and
     unload `big` CYCLES more times.
Every answer is checked: status 200, and its `model` block names the model and input size asked
for. The server's resident memory (VmRSS) is sampled every 50 ms; after the last unload it is
compared with a fresh server that loads only what is left (`small`), after the same traffic.

    .venv/bin/python benchmarks/models.py --out benchmarks/results/cpu/models
"""

# ruff: noqa: E501
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server import spawned_server
from benchmarks.reload import photo, rss_mb
from service.host import host_cpu_count
from service.settings import DEMO_MODEL_DIR

KEY = "bench-admin-key"
PHASE_S = 8.0
CYCLES = 3  # load and unload big again, under small's load, after the changes
SIZES = {"small": 256, "big": 640, "extra": 256}


class Load:
    """Clients posting /detect?model=NAME in a loop; every answer recorded and checked."""

    def __init__(self, url: str, jpeg: bytes) -> None:
        self.url, self.jpeg = url, jpeg
        self.answers: list[dict[str, Any]] = []  # model, phase, status, seconds, ok
        self.phase = "start"
        self._stops: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []

    def start(self, model: str, clients: int) -> None:
        stop = self._stops.setdefault(model, threading.Event())
        stop.clear()
        for _ in range(clients):
            thread = threading.Thread(target=self._client, args=(model, stop), name=f"client-{model}")
            thread.start()
            self._threads.append(thread)

    def stop(self, model: str) -> None:
        self._stops[model].set()
        for thread in list(self._threads):
            if thread.name.endswith(model):
                thread.join()

    def stop_all(self) -> None:
        for stop in self._stops.values():
            stop.set()
        for thread in self._threads:
            thread.join()

    def _client(self, model: str, stop: threading.Event) -> None:
        files = [("images", ("a.jpg", self.jpeg, "image/jpeg"))]
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not stop.is_set():
                phase, t0 = self.phase, time.perf_counter()
                try:
                    r = http.post("/detect", params={"model": model}, files=files)
                    status = r.status_code
                    answered = r.json()["model"] if status == 200 else {}
                except httpx.HTTPError:
                    status, answered = 0, {}
                seconds = time.perf_counter() - t0
                ok = (
                    status == 200
                    and answered.get("name") == model
                    and answered.get("input_size") == SIZES[model]
                )
                self.answers.append({"model": model, "phase": phase, "status": status, "version": answered.get("version"),
                                     "seconds": seconds, "ok": ok})  # fmt: skip


def latency(answers: list[dict[str, Any]]) -> dict[str, float]:
    ms = np.asarray([a["seconds"] for a in answers]) * 1000
    if not len(ms):
        return {}
    return {
        "requests": len(ms),
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
    }


def export_big(work: Path) -> Path:
    out = work / "big-export"
    command = [
        sys.executable,
        "-m",
        "cli",
        "export",
        str(DEMO_MODEL_DIR / "checkpoint.pt"),
        "--img-size",
        str(SIZES["big"]),
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1], capture_output=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="yolor-models-"))
    repo = work / "repository"
    shutil.copytree(DEMO_MODEL_DIR, repo / "small" / "1")
    shutil.copytree(export_big(work), repo / "big" / "1")
    shutil.copytree(DEMO_MODEL_DIR, repo / "extra" / "1")
    jpeg = photo()
    memory: list[tuple[float, float]] = []
    steps: list[dict[str, Any]] = []
    env = {"YOLOR_MODEL_REPOSITORY": str(repo), "YOLOR_MODELS": "small,big", "YOLOR_ADMIN_KEYS": KEY}
    try:
        with spawned_server(DEMO_MODEL_DIR, env) as (url, pid):
            load = Load(url, jpeg)
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    memory.append((time.perf_counter(), rss_mb(pid)))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            admin = httpx.Client(base_url=url, timeout=300, headers={"X-API-Key": KEY})

            def change(what: str, path: str) -> None:
                before, t0 = rss_mb(pid), time.perf_counter()
                r = admin.post(path)
                t1 = time.perf_counter()
                time.sleep(1.0)
                peak = max((m for t, m in memory if t0 <= t <= t1 + 0.05), default=before)
                steps.append({"step": what, "status": r.status_code, "answer": r.json(), "seconds": round(t1 - t0, 3),
                              "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1), "rss_after_1s_mb": round(rss_mb(pid), 1)})  # fmt: skip
                print(json.dumps(steps[-1]), flush=True)

            load.phase = "small alone"
            load.start("small", 2)
            time.sleep(PHASE_S)
            load.phase = "small beside big"
            load.start("big", 2)
            time.sleep(PHASE_S)
            load.phase = "changes"
            rss_two = rss_mb(pid)
            change("load extra", "/v2/repository/models/extra/load")
            shutil.copytree(DEMO_MODEL_DIR, repo / "small" / "2")
            change("load small (version 2 replaces 1)", "/v2/repository/models/small/load")
            load.stop("big")
            change("unload big", "/v2/repository/models/big/unload")
            change("unload extra", "/v2/repository/models/extra/unload")
            time.sleep(2.0)
            rss_left = rss_mb(pid)
            for cycle in range(1, CYCLES + 1):  # memory comes back each time, not only once
                change(f"cycle {cycle}: load big", "/v2/repository/models/big/load")
                change(f"cycle {cycle}: unload big", "/v2/repository/models/big/unload")
            load.stop_all()
            done.set()
            sampler.join()
            index = admin.post("/v2/repository/index").json()
            admin.close()
        # A fresh server holding only what is left, after the same kind of traffic.
        with spawned_server(DEMO_MODEL_DIR, {**env, "YOLOR_MODELS": "small"}) as (url, pid):
            fresh = Load(url, jpeg)
            fresh.phase = "fresh small only"
            fresh.start("small", 2)
            time.sleep(PHASE_S)
            fresh.stop_all()
            rss_fresh = rss_mb(pid)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    answers = load.answers
    failed = [a for a in answers if not a["ok"]]
    summary: dict[str, Any] = {
        "machine": f"{platform.machine()}, {host_cpu_count()} CPUs, Python {platform.python_version()}",
        "phase_s": PHASE_S,
        "requests": len(answers),
        "failed": len(failed),
        "failed_examples": failed[:5],
        "small_versions_seen": sorted({a["version"] for a in answers if a["model"] == "small" and a["ok"]}),
        "latency_ms": {
            f"{phase}: {model}": latency([a for a in answers if a["phase"] == phase and a["model"] == model])
            for phase in ("small alone", "small beside big", "changes")
            for model in ("small", "big")
            if any(a["phase"] == phase and a["model"] == model for a in answers)
        },
        "rss_mb": {
            "small and big": round(rss_two, 1),
            "after the changes (small left)": round(rss_left, 1),
            "after each cycle's unload": [
                s["rss_after_1s_mb"] for s in steps if s["step"].endswith("unload big")
            ],
            "fresh server, small only": round(rss_fresh, 1),
        },
        "steps": steps,
        "index_at_end": index,
    }
    (args.out / "models.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("steps", "index_at_end")}, indent=2))
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
