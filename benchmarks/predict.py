"""`yolor predict` over a folder of images, in-process (`--model`) against the same through a running
`yolor serve` (`--url`), the demo model on the CPU, measured side by side in one run.

The folder: `--images` 640x480 JPEGs cut at random from the sample photos (fixed seed). Each round
runs `python -m cli predict FOLDER --model service/demo_model --out ...` and `... --url URL --out ...`
(the server started once, before the rounds, and warm), alternating; wall time of the command,
images/s, and the ratio. Printed, and written to OUT/predict.json and OUT/predict.md.

    .venv/bin/python benchmarks/predict.py --out benchmarks/results/cpu/predict
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.host import host_info
from bench.images import encode_jpeg
from bench.server import spawned_server
from service.settings import DEMO_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int) -> None:
    import cv2
    from skimage import data

    photos = [getattr(data, name)()[..., :3] for name in ("astronaut", "coffee", "chelsea", "rocket")]
    photos = [cv2.resize(p, (960, 720)) for p in photos]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = int(rng.integers(0, 720 - 480)), int(rng.integers(0, 960 - 640))
        crop = photo[y : y + 480, x : x + 640]
        (folder / f"{i:05d}.jpg").write_bytes(encode_jpeg(crop[:, ::-1] if i % 2 else crop))


def predict(folder: Path, where: list[str]) -> float:
    """Wall seconds of one `yolor predict` run (a fresh output folder)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "cli", "predict", str(folder), *where, "--out", out, "-q"]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(folder, args.images)
        local_s, remote_s = [], []
        with spawned_server(DEMO_MODEL_DIR) as (url, _):
            for round_ in range(args.rounds):
                local_s.append(predict(folder, ["--model", str(DEMO_MODEL_DIR)]))
                remote_s.append(predict(folder, ["--url", url]))
                print(
                    f"round {round_ + 1}: in-process {local_s[-1]:.1f} s, --url {remote_s[-1]:.1f} s",
                    flush=True,
                )
    local, remote = statistics.median(local_s), statistics.median(remote_s)
    record = {
        "command": " ".join(sys.argv),
        "host": host_info(),
        "images": args.images,
        "in_process_s": [round(s, 2) for s in local_s],
        "url_s": [round(s, 2) for s in remote_s],
        "in_process_images_per_s": round(args.images / local, 1),
        "url_images_per_s": round(args.images / remote, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predict.json").write_text(json.dumps(record, indent=2) + "\n")
    table = (
        f"`{record['command']}`\n\n"
        "| images | in-process s (images/s) | --url s (images/s) | --url time / in-process time |\n"
        f"|---:|---:|---:|---:|\n| {args.images} | {local:.1f} ({args.images / local:.1f}) "
        f"| {remote:.1f} ({args.images / remote:.1f}) | {remote / local:.2f} |\n"
        "\nMedians over the rounds; wall time of the whole command (start-up, model load and warm-up "
        "included for in-process; the server was started before).\n"
    )
    (args.out / "predict.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
