"""How many live 640x480 streams at 5 fps a server sustains, and what they cost `/detect`: a probe
behind docs/benchmarks.md ("Live streams").

    .venv/bin/python benchmarks/streams.py [--model DIR] [--streams 1,2,4,8,12,16] [--camera-fps 15]
        [--seconds 20] [--beside N] [--out DIR]

Starts `yolor serve` for the model and one HTTP MJPEG camera per stream (scikit-image's sample
photos at 640x480, JPEG quality 90, `--camera-fps` frames/s each, from threads of this process).
For each count of streams: creates them (fps 5, tracking on, one line), lets them settle, then
over `--seconds` reads every stream's status before and after (frames processed and dropped, by
reason) and collects each processed frame's capture-to-publication latency from one SSE listener
per stream. A count is sustained when every stream processes >= 99% of its 5 frames/s and under 1%
of the frames it wanted are dropped. `/detect`'s latency (one client at a time, the sample photos)
is measured with no stream, then beside the most streams sustained (or `--beside` streams).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.cameras import MjpegCamera
from bench.images import sample_jpegs
from bench.load import closed_loop
from bench.server import spawned_server
from service.settings import DEMO_MODEL_DIR

ADMIN = {"X-API-Key": "bench-admin-key"}
FPS = 5.0


async def listen(
    session: aiohttp.ClientSession, url: str, latencies: list[float], recording: asyncio.Event
) -> None:
    """One stream's SSE: every processed frame's latency_ms while `recording` is set."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
        event = None
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "frame" and recording.is_set():
                latencies.append(json.loads(line[6:])["latency_ms"])


async def level(base: str, cameras: list[MjpegCamera], count: int, seconds: float) -> dict[str, Any]:
    async with aiohttp.ClientSession(base) as session:
        ids = []
        for camera in cameras[:count]:
            spec = {"source": camera.url, "fps": FPS, "track": True,
                    "lines": [{"name": "middle", "start": [0, 0.5], "end": [1, 0.5]}]}  # fmt: skip
            async with session.post("/streams", json=spec, headers=ADMIN) as response:
                assert response.status == 201, await response.text()
                ids.append((await response.json())["id"])
        recording = asyncio.Event()
        latencies: list[float] = []
        listeners = [
            asyncio.create_task(listen(session, f"/streams/{i}/events", latencies, recording)) for i in ids
        ]
        await asyncio.sleep(5)  # opened, warmed up, the trackers' first frames

        async def statuses() -> list[dict[str, Any]]:
            out = []
            for i in ids:
                async with session.get(f"/streams/{i}") as response:
                    out.append(await response.json())
            return out

        before = await statuses()
        recording.set()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        after = await statuses()
        elapsed = time.monotonic() - started
        recording.clear()
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        for i in ids:
            async with session.delete(f"/streams/{i}", headers=ADMIN) as response:
                assert response.status == 204
    per_stream = []
    for a, b in zip(before, after, strict=True):
        processed = b["frames"]["processed"] - a["frames"]["processed"]
        dropped = sum(b["dropped"].values()) - sum(a["dropped"].values())
        reasons = {k: v - a["dropped"].get(k, 0) for k, v in b["dropped"].items()}
        per_stream.append(
            {"fps": processed / elapsed, "dropped": dropped, "processed": processed, "reasons": reasons}
        )
    processed = sum(s["processed"] for s in per_stream)
    dropped = sum(s["dropped"] for s in per_stream)
    drop_share = dropped / max(1, processed + dropped)
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    result = {
        "streams": count,
        "processed_fps_min": round(min(s["fps"] for s in per_stream), 2),
        "processed_fps_total": round(processed / elapsed, 1),
        "dropped_share": round(drop_share, 4),
        "dropped_by_reason": dict(
            sum((collections.Counter(s["reasons"]) for s in per_stream), collections.Counter())
        ),
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "latency_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "frames_measured": len(latencies),
    }
    result["sustained"] = result["processed_fps_min"] >= 0.99 * FPS and drop_share < 0.01
    return result


async def detect_latency(base: str, jpegs: list[bytes], seconds: float) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        window = await closed_loop(
            session, f"{base}/detect", jpegs, concurrency=1, seconds=seconds, warmup_s=2
        )
    latencies = sorted(window.latencies)
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    photos = sample_jpegs()
    counts = [int(c) for c in args.streams.split(",")]
    cameras_needed = max([*counts, args.beside or 0])
    cameras = [MjpegCamera(photos[i % len(photos):] + photos[: i % len(photos)], fps=args.camera_fps)
               for i in range(cameras_needed)]  # fmt: skip
    for camera in cameras:
        camera.start()
    env = {"YOLOR_ADMIN_KEYS": ADMIN["X-API-Key"], "YOLOR_STREAM_ALLOWED_HOSTS": "127.0.0.1",
           "YOLOR_MAX_STREAMS": str(cameras_needed)}  # fmt: skip
    try:
        with spawned_server(args.model, overrides=env) as (base, _):
            quiet = await detect_latency(base, photos, args.seconds)
            print(f"/detect alone: {quiet}", flush=True)
            levels = []
            for count in counts:
                result = await level(base, cameras, count, args.seconds)
                print(result, flush=True)
                levels.append(result)
            sustained = [r["streams"] for r in levels if r["sustained"]]
            most = args.beside or (max(sustained) if sustained else None)
            loaded = None
            if most is not None:
                loaded_task = asyncio.create_task(level(base, cameras, most, args.seconds + 8))
                await asyncio.sleep(6)
                loaded = await detect_latency(base, photos, args.seconds)
                loaded["streams"] = most
                loaded["level"] = await loaded_task
                print(f"/detect beside {most} streams: {loaded}", flush=True)
    finally:
        for camera in cameras:
            camera.stop()
    return {"camera_fps": args.camera_fps, "stream_fps": FPS, "seconds": args.seconds, "levels": levels,
            "most_sustained": most, "detect_alone": quiet, "detect_beside_streams": loaded}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--streams", default="1,2,4,8,12,16")
    parser.add_argument("--camera-fps", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--beside", type=int, default=None, help="streams beside /detect's measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "streams.json").write_text(text + "\n")
        (args.out / "command.txt").write_text(" ".join(["python", *sys.argv]) + "\n")


if __name__ == "__main__":
    main()
