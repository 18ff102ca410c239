"""What YOLOR_JPEG_REDUCED_DECODE costs in accuracy and saves in decoding: the study behind
docs/benchmarks.md.

    .venv/bin/python benchmarks/reduced_decode.py [--images 300] [--out benchmarks/results/cpu/reduced-decode]

For each image size (512, 1024, 2048: 2x, 4x and 8x the demo model's 256 px input) it draws a
held-out synthetic set with `yolor data synth` (seed 1, objects scaled with the image so they
letterbox to what the model was trained on), encodes every image as a JPEG (quality 90, as a camera
would send it), and runs the bundled demo model on it three times through the serving pre-processing
(`service.core.preprocess.Preprocessor`): full decode + letterbox, and reduced decode (1/2, 1/4, 1/8)
no smaller than 1x and than 2x the letterbox (the margin). It
prints COCO mAP@0.5 and mAP@0.5:0.95 of each (boxes in full-image pixels), and the CPU ms of one
decode + letterbox.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.bare import load_backend
from service.core.images import jpeg_reduction
from service.core.preprocess import Preprocessor
from service.processing import head_layout, scale_boxes, select_detections
from service.settings import DEMO_MODEL_DIR, Settings
from train.data.datasets import load_dataset
from train.evaluate import coco_map, ground_truth

SIZES = (512, 1024, 2048)
# full decode; reduced, decoded no smaller than 1x / 2x the letterbox (REDUCED_DECODE_MARGIN)
VARIANTS: tuple[tuple[str, float | None], ...] = (
    ("full", None),
    ("reduced, margin 1", 1.0),
    ("reduced, margin 2", 2.0),
)


def synth(out: Path, size: int, images: int) -> Path:
    command = [sys.executable, "-m", "cli", "data", "synth", "--out", str(out), "--train", "0"]
    command += ["--val", str(images), "--seed", "1", "--size", str(size), "--min-size", str(12 * size / 256)]
    subprocess.run(command, check=True, capture_output=True)
    return out / "dataset.json"


def measure(dataset_json: Path, settings: Settings) -> dict[str, object]:
    manifest, backend, _ = load_backend(settings)
    layout = head_layout(backend.head)
    dataset = load_dataset(dataset_json, "val")
    jpegs = []
    for i in range(len(dataset)):
        sample = dataset[i]
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        assert ok
        jpegs.append((jpeg.tobytes(), sample))
    row: dict[str, object] = {"images": len(jpegs), "longer_side": max(jpegs[0][1].image.shape[:2])}
    size = manifest.input_size
    for key, margin in VARIANTS:
        preprocessor = Preprocessor(
            manifest, max_pixels=1 << 30, reduced_decode=margin is not None, reduce_margin=margin or 1.0
        )
        gts, preds, cpu = [], [], 0.0
        for jpeg, sample in jpegs:
            start = time.thread_time()
            prepared = preprocessor.whole(jpeg)
            cpu += time.thread_time() - start
            boxes, scores, classes = layout.candidates(backend.infer(prepared.tensor[None])[0], 0.001)
            kept = select_detections(boxes, scores, classes, conf=0.001, iou=0.65, max_det=300)
            preds.append((scale_boxes(kept.boxes, prepared.lb), kept.scores, kept.class_ids))
            gts.append(ground_truth(sample.boxes, sample.classes, sample.crowd))
        metrics = coco_map(gts, preds, manifest.nc)
        h, w = jpegs[0][1].image.shape[:2]
        row[key] = {
            "map50": metrics["map50"],
            "map50_95": metrics["map50_95"],
            "decode_letterbox_cpu_ms": cpu * 1000 / len(jpegs),
            "factor": 1 if margin is None else jpeg_reduction(w, h, round(size * margin)),
        }
    backend.close()
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| longer side | decoded | decoded at | mAP@.5 | mAP@.5:.95 | decode+letterbox CPU ms | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        full = r["full"]
        for key, _ in VARIANTS:
            v = r[key]
            lines.append(
                f"| {r['longer_side']} px ({r['images']} images) | {key} | 1/{v['factor']} | "
                f"{v['map50']:.4f} | {v['map50_95']:.4f} | {v['decode_letterbox_cpu_ms']:.2f} | "
                f"{full['decode_letterbox_cpu_ms'] / v['decode_letterbox_cpu_ms']:.1f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="write reduced-decode.json/.md here")
    args = parser.parse_args()
    settings = Settings(model_dir=DEMO_MODEL_DIR, backend="onnxruntime", device="cpu", precision="fp32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            rows.append(measure(synth(Path(tmp) / str(size), size, args.images), settings))
            print(f"{size} px done", file=sys.stderr)
    table = markdown(rows)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "reduced-decode.json").write_text(json.dumps(rows, indent=1) + "\n")
        command = "python benchmarks/reduced_decode.py " + " ".join(sys.argv[1:])
        (args.out / "reduced-decode.md").write_text(f"`{command}`\n\n{table}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
