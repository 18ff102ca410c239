"""Video throughput of a real `yolor serve` (the demo model, ONNX Runtime on the CPU) against this
machine's limit for the same work, measured side by side in one run.

The clip: the sample photos panned across a 640x480 frame, `--frames` frames at 30 fps, H.264 (made
with PyAV, so no file is needed). Per frame, in this process on one thread: the CPU to decode it
(PyAV, the server's decoder), to letterbox it (the server's preprocessor), and to run it through the
backend at the server's largest batch (`bench.bare`, as `yolor bench bare` measures it). The limit
is cores / (decode + letterbox + inference CPU per frame) frames/s: what the cores could do with no
other cost. Then `POST /detect/video` of the clip to the server, `--rounds` times: frames/s as wall
time from the request to the last line, and the ratio to the limit. Printed, and written to
OUT/video.json and OUT/video.md.

    .venv/bin/python benchmarks/video.py --out benchmarks/results/cpu/video
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bare import bench_batch, load_backend
from bench.host import host_info
from bench.server import spawned_server
from bench.stats import process_cpu_seconds
from service.core.images import Decoded
from service.core.preprocess import Preprocessor, Upload
from service.core.video import VideoClip, VideoLimits
from service.host import host_cpu_count
from service.manifest import load_manifest
from service.settings import DEMO_MODEL_DIR, Settings

WIDTH, HEIGHT, FPS = 640, 480, 30


def make_clip(frames: int) -> bytes:
    """The sample photos side by side, panned 4 px a frame through a 640x480 window; H.264 in MP4."""
    import av
    import cv2
    from skimage import data

    strip = np.concatenate(
        [cv2.resize(getattr(data, n)()[..., :3], (640, 480)) for n in ("astronaut", "coffee", "chelsea")],
        axis=1,
    )
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(frames):
            x = (4 * i) % (strip.shape[1] - WIDTH)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(strip[:, x : x + WIDTH]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def decode_and_letterbox_ms(clip: bytes) -> tuple[float, float, int]:
    """CPU ms per frame to decode the clip as the server reads it (`VideoClip`; FFmpeg's own decoder
    threads, so process CPU is counted) and to letterbox a frame (one thread)."""
    video = VideoClip(io.BytesIO(clip), VideoLimits(max_frames=1 << 30, max_seconds=1e9, max_pixels=1 << 30))
    start = process_cpu_seconds()
    try:
        frames = [frame.image for frame in video.frames()]
    finally:
        video.close()
    decode = (process_cpu_seconds() - start) * 1000 / len(frames)
    preprocessor = Preprocessor(load_manifest(DEMO_MODEL_DIR), max_pixels=1 << 30)
    start = time.thread_time()
    for image in frames:
        preprocessor.passes(Upload(Decoded(image, HEIGHT, WIDTH), []), [None])
    letterbox = (time.thread_time() - start) * 1000 / len(frames)
    return decode, letterbox, len(frames)


def inference_ms(seconds: float) -> tuple[float, int]:
    """CPU ms per image at the server's largest batch, the backend loaded as the server loads it."""
    _, backend, max_batch = load_backend(Settings(model_dir=DEMO_MODEL_DIR, device="cpu"))
    try:
        result = bench_batch(backend, max_batch, min_seconds=seconds)
    finally:
        backend.close()
    return result.cpu_ms_per_image, max_batch


def served(clip: bytes) -> dict[str, Any]:
    import httpx

    with spawned_server(DEMO_MODEL_DIR) as (url, _):
        started = time.perf_counter()
        lines = []
        with httpx.stream(
            "POST", f"{url}/detect/video", files={"video": ("clip.mp4", clip, "video/mp4")}, timeout=600
        ) as response:
            response.raise_for_status()
            first_line_s = None
            for line in response.iter_lines():
                if first_line_s is None:
                    first_line_s = time.perf_counter() - started
                lines.append(json.loads(line))
        wall = time.perf_counter() - started
    summary = lines[-1]["summary"]
    return {
        "frames": summary["frames_processed"],
        "wall_s": round(wall, 3),
        "frames_per_s": round(summary["frames_processed"] / wall, 2),
        "first_line_s": round(first_line_s or 0.0, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="bare backend measuring time")
    args = parser.parse_args()
    clip = make_clip(args.frames)
    decode, letterbox, frames = decode_and_letterbox_ms(clip)
    infer, max_batch = inference_ms(args.seconds)
    cores = host_cpu_count()
    limit = cores * 1000 / (decode + letterbox + infer)
    print(f"per frame: decode {decode:.2f} + letterbox {letterbox:.2f} + inference {infer:.2f} CPU ms "
          f"(batch {max_batch}); limit {limit:.1f} frames/s on {cores} cores", flush=True)  # fmt: skip
    runs = []
    for round_ in range(args.rounds):
        run = served(clip)
        runs.append(run)
        print(f"round {round_ + 1}: {run}", flush=True)
    fps = statistics.median(r["frames_per_s"] for r in runs)
    record = {
        "command": " ".join(sys.argv),
        "host": host_info(),
        "clip": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "frames": frames, "bytes": len(clip)},
        "cpu_ms_per_frame": {
            "decode": round(decode, 3), "letterbox": round(letterbox, 3), "inference": round(infer, 3),
        },
        "inference_batch": max_batch,
        "limit_frames_per_s": round(limit, 2),
        "served": runs,
        "served_frames_per_s_median": fps,
        "served_over_limit": round(fps / limit, 3),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "video.json").write_text(json.dumps(record, indent=2) + "\n")
    table = (
        f"`{record['command']}`\n\n"
        "| decode CPU ms | letterbox CPU ms | inference CPU ms | limit frames/s | served frames/s (median) "
        "| served / limit |\n|---:|---:|---:|---:|---:|---:|\n"
        f"| {decode:.2f} | {letterbox:.2f} | {infer:.2f} | {limit:.1f} | {fps:.1f} | {fps / limit:.3f} |\n"
    )
    (args.out / "video.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
