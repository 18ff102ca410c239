"""Zero-downtime reload measured: a real `yolor serve` (the demo model, ONNX Runtime on the CPU) under
steady load from 4 clients while it is reloaded 6 times, once to a broken model folder.

Folders: the demo model (a), a copy of it (b) and a folder whose model.json is cut short (broken).
Reloads, 4 s apart: a->b, b->broken (refused: 422), b->a, a->b, b->a, a->a (the same folder
re-read). Each client posts one 640x480 JPEG per request (astronaut) in a loop. Printed and written
to OUT/reload.json and OUT/README.md: requests and failures by status, latency p50/p99 overall and
within 1 s of a reload, each reload's answer and timings, and the server's resident memory
(VmRSS, sampled every 50 ms) before each reload, at its peak during it and 1 s after.

    .venv/bin/python benchmarks/reload.py --out benchmarks/results/cpu/reload
"""

# ruff: noqa: E501
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server import spawned_server
from service.host import host_cpu_count
from service.settings import DEMO_MODEL_DIR

KEY = "bench-admin-key"
CLIENTS = 4
GAP_S = 4.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def photo() -> bytes:
    import skimage.data

    image = cv2.resize(skimage.data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return jpeg.tobytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="yolor-reload-"))
    folders = {"a": DEMO_MODEL_DIR, "b": work / "b", "broken": work / "broken"}
    shutil.copytree(DEMO_MODEL_DIR, folders["b"])
    folders["broken"].mkdir()
    (folders["broken"] / "model.json").write_text('{"format": "yolor-serving/model/1", "arch": ')
    plan = ["b", "broken", "a", "b", "a", "a"]
    jpeg = photo()
    answers: list[tuple[float, int, float]] = []  # (finished at, status, seconds)
    memory: list[tuple[float, float]] = []
    stop = threading.Event()
    try:
        with spawned_server(folders["a"], {"YOLOR_ADMIN_KEYS": KEY}) as (url, pid):

            def client() -> None:
                with httpx.Client(base_url=url, timeout=60) as http:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        try:
                            status = http.post(
                                "/detect", files=[("images", ("a.jpg", jpeg, "image/jpeg"))]
                            ).status_code
                        except httpx.HTTPError:
                            status = 0  # connection refused or reset: a gap in service
                        answers.append((time.perf_counter(), status, time.perf_counter() - t0))

            def sample() -> None:
                while not stop.is_set():
                    memory.append((time.perf_counter(), rss_mb(pid)))
                    time.sleep(0.05)

            threads = [threading.Thread(target=client) for _ in range(CLIENTS)] + [
                threading.Thread(target=sample)
            ]
            for thread in threads:
                thread.start()
            time.sleep(GAP_S)
            reloads = []
            with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": KEY}) as admin:
                for name in plan:
                    before = rss_mb(pid)
                    t0 = time.perf_counter()
                    r = admin.post("/admin/reload", json={"model_dir": str(folders[name])})
                    t1 = time.perf_counter()
                    time.sleep(1.0)
                    during = max(m for t, m in memory if t0 <= t <= t1 + 0.05) if memory else before
                    reloads.append({"to": name, "status": r.status_code, "answer": r.json(), "started": t0, "ended": t1,
                                    "seconds": round(t1 - t0, 3), "rss_before_mb": round(before, 1),
                                    "rss_peak_mb": round(during, 1), "rss_after_1s_mb": round(rss_mb(pid), 1)})  # fmt: skip
                    print(
                        json.dumps({k: v for k, v in reloads[-1].items() if k not in ("started", "ended")}),
                        flush=True,
                    )
                    time.sleep(GAP_S - 1.0)
            stop.set()
            for thread in threads:
                thread.join()
            final_rss = rss_mb(pid)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    statuses: dict[str, int] = {}
    for _, status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latency = np.asarray([s for _, _, s in answers]) * 1000
    near = np.asarray(
        [s for t, _, s in answers if any(r["started"] <= t <= r["ended"] + 1.0 for r in reloads)]
    ) * 1000  # fmt: skip
    summary: dict[str, Any] = {
        "machine": f"{platform.machine()}, {host_cpu_count()} CPUs, Python {platform.python_version()}",
        "clients": CLIENTS,
        "requests": len(answers),
        "statuses": statuses,
        "failed": len(answers) - statuses.get("200", 0),
        "latency_ms": {
            "p50": round(float(np.percentile(latency, 50)), 1),
            "p99": round(float(np.percentile(latency, 99)), 1),
        },
        "latency_near_reloads_ms": {
            "p50": round(float(np.percentile(near, 50)), 1),
            "p99": round(float(np.percentile(near, 99)), 1),
            "max": round(float(near.max()), 1),
            "requests": len(near),
        },
        "rss_start_mb": round(memory[0][1], 1),
        "rss_end_mb": round(final_rss, 1),
        "reloads": [{k: v for k, v in r.items() if k not in ("started", "ended")} for r in reloads],
    }
    (args.out / "reload.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "reloads"}, indent=2))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
