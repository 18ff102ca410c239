"""Sliced inference measured: accuracy and throughput of `tile` against the `sahi` package.

Data: `yolor data synth`'s drawing code at 3000 px (longer side; aspect 3:4..4:3) with up to 150
shapes of 16-53 px each (`--size`, `--images`, seed 7), written as JPEG (quality 95), as large photos
come. Model: the bundled demo model (256 px input). Every method sees the same JPEG bytes and runs
the same ONNX with the same thresholds (conf 0.05, NMS IoU 0.65, at most 300 detections per image):

- ours, served: `yolor serve` in a subprocess (the 2-core defaults), one image per `POST /detect`,
  sequentially (1 client) and from 4 clients; untiled, `tile=true` with 256 px windows (the
  model input: what SAHI is given too; a server allowing 512 windows per image) merged by NMS
  (the default) and NMM, and `tile=auto` on a server with every default (windows grown to fit
  YOLOR_MAX_TILES_PER_IMAGE=64);
- SAHI `get_sliced_prediction` (0.12.8, its defaults: standard pass on, GREEDYNMM / IOS 0.5, which
  it switches to NMS / IoU 0.5 at this low confidence threshold; also forced to stay GREEDYNMM) with
  256 px slices and 0.2 overlap, driving a SAHI `DetectionModel` around our ONNX Runtime backend
  with the serving letterbox + NMS per slice, at batch 1 (SAHI's default) and batch 8 (its
  `batch_size`, our backend batching natively).

Printed and written to OUT/tiling.json and OUT/table.md: COCO mAP@0.5, mAP@0.5:0.95 and recall
(detections matched at IoU 0.5 / ground truth), images/s and the process CPU seconds per image of
each method over the whole set; then the throughput ratio measured side by side (`--rounds`
rounds, each running ours and SAHI back to back on the same `--round-images` images, because the
machine's speed drifts within minutes: docs/benchmarks.md, "The demo model"), per round and the
median.

    .venv/bin/pip install --no-deps sahi==0.12.8 shapely   # benchmark only, not a project dependency
    .venv/bin/python benchmarks/tiling.py --out benchmarks/results/cpu/tiling
"""

# ruff: noqa: E501
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server import spawned_server
from service.backends.onnx_runtime import OnnxRuntimeBackend
from service.host import host_cpu_count
from service.manifest import load_manifest
from service.processing import (
    Detections,
    box_iou,
    head_layout,
    letterbox,
    scale_boxes,
    select_detections,
    to_input_tensor,
)
from service.settings import DEMO_MODEL_DIR
from train.data.synth import SynthOptions, generate_image, image_rng
from train.evaluate import coco_map, ground_truth

CONF, IOU, MAX_DET = 0.05, 0.65, 300
SLICE, OVERLAP = 256, 0.2


def make_images(count: int, size: int, seed: int) -> list[tuple[bytes, np.ndarray, np.ndarray]]:
    """(JPEG bytes, boxes, classes) of `count` large images with many small shapes."""
    options = SynthOptions(size=size, min_size=16, max_frac=40 / (0.75 * size), max_objects=150)
    out = []
    for i in range(count):
        drawn = generate_image(image_rng(seed, "val", i), options)
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(drawn.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        assert ok
        out.append((jpeg.tobytes(), drawn.boxes, drawn.classes))
    return out


def recall(gts: list[tuple[np.ndarray, np.ndarray]], preds: list[Detections]) -> float:
    """Ground-truth boxes with a same-class detection at IoU >= 0.5 (greedy by score, one each)."""
    found = total = 0
    for (boxes, classes), det in zip(gts, preds, strict=True):
        total += len(boxes)
        if not len(boxes) or not len(det):
            continue
        iou = box_iou(det.boxes, boxes) * (det.class_ids[:, None] == classes[None, :])
        taken = np.zeros(len(boxes), bool)
        for row in iou[np.argsort(-det.scores)]:
            row = np.where(taken, 0.0, row)
            if row.max() >= 0.5:
                taken[row.argmax()] = True
        found += int(taken.sum())
    return found / max(total, 1)


def score(name: str, gts: list[tuple[np.ndarray, np.ndarray]], preds: list[Detections], seconds: float,
          cpu_s: float, nc: int, **extra: Any) -> dict[str, Any]:  # fmt: skip
    metrics = coco_map([ground_truth(b, c) for b, c in gts], [(d.boxes, d.scores, d.class_ids) for d in preds], nc,
                       max_detections=MAX_DET)  # fmt: skip
    row = {
        "method": name,
        "map50": round(metrics["map50"], 4),
        "map50_95": round(metrics["map50_95"], 4),
        "recall50": round(recall(gts, preds), 4),
        "images_per_s": round(len(preds) / seconds, 3),
        "cpu_s_per_image": round(cpu_s / len(preds), 3),
        **extra,
    }
    print(json.dumps(row), flush=True)
    return row


def _detections(result: dict[str, Any]) -> Detections:
    dets = result["detections"]
    return Detections(
        np.asarray([d["box"] for d in dets], np.float32).reshape(-1, 4),
        np.asarray([d["score"] for d in dets], np.float32),
        np.asarray([d["class_id"] for d in dets], np.int64),
    )


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(base_url: str, pid: int, jpegs: list[bytes], params: dict[str, Any], clients: int) -> tuple[list[Detections], float, float, list[int]]:  # fmt: skip
    """Detections, seconds, server CPU seconds and tiles per image, `clients` requests at a time."""
    query = {"conf": CONF, "iou": IOU, "max_det": MAX_DET, **params}
    with httpx.Client(base_url=base_url, timeout=300) as client:

        def one(jpeg: bytes) -> dict[str, Any]:
            r = client.post("/detect", params=query, files=[("images", ("img.jpg", jpeg, "image/jpeg"))])
            r.raise_for_status()
            return r.json()["results"][0]

        one(jpegs[0])  # warm
        cpu0, t0 = _process_cpu(pid), time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, jpegs))
        seconds, cpu = time.perf_counter() - t0, _process_cpu(pid) - cpu0
    return [_detections(r) for r in results], seconds, cpu, [r["tiles"] for r in results]


def sahi_model(model_dir: Path) -> Any:
    """A SAHI DetectionModel running our exported ONNX with the serving letterbox and NMS per slice."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    manifest = load_manifest(model_dir)
    layout = head_layout(manifest.head)
    backend = OnnxRuntimeBackend(
        model_dir / manifest.artifacts["onnx"].file, head=manifest.head, max_batch_size=manifest.max_batch,
        profile=(manifest.input.name, manifest.input_size), intra_op_threads=host_cpu_count(),
    )  # fmt: skip

    class YolorOnnx(DetectionModel):  # type: ignore[misc]
        def load_model(self) -> None:
            self.model = backend

        def _run(self, images: list[np.ndarray]) -> list[Detections]:
            boxed = [
                letterbox(image, manifest.input_size, color=manifest.input.letterbox_pad) for image in images
            ]
            out = backend.infer(to_input_tensor([b for b, _ in boxed]))  # SAHI hands RGB slices
            dets = []
            for row, (_, lb) in zip(out, boxed, strict=True):
                kept = select_detections(*layout.candidates(row, CONF), conf=CONF, iou=IOU, max_det=MAX_DET)
                dets.append(Detections(scale_boxes(kept.boxes, lb), kept.scores, kept.class_ids))
            return dets

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = self._run([image])

        def perform_batch_inference(self, images: list[np.ndarray]) -> None:
            self._original_predictions = [
                d for i in range(0, len(images), 8) for d in self._run(images[i : i + 8])
            ]
            self._batch_images = None

        def _create_object_prediction_list_from_original_predictions(
            self, shift_amount_list: Any = None, full_shape_list: Any = None
        ) -> None:
            shifts = shift_amount_list or [[0, 0]]
            shifts = shifts if isinstance(shifts[0], list | tuple) else [shifts]
            shapes = full_shape_list if full_shape_list and isinstance(full_shape_list[0], list | tuple) else [full_shape_list] * len(self._original_predictions)  # fmt: skip
            per_image = []
            for det, shift, shape in zip(self._original_predictions, shifts, shapes, strict=False):
                per_image.append([
                    ObjectPrediction(bbox=b.tolist(), category_id=int(c), category_name=manifest.class_names[int(c)],
                                     score=float(s), shift_amount=list(shift), full_shape=shape)
                    for b, s, c in zip(det.boxes, det.scores, det.class_ids, strict=True)
                    if b[2] > b[0] and b[3] > b[1]
                ])  # fmt: skip
            self._object_prediction_list_per_image = per_image

    return YolorOnnx(confidence_threshold=CONF, device="cpu", load_at_init=True)


def sahi_run(
    model: Any, jpegs: list[bytes], batch: int, **options: Any
) -> tuple[list[Detections], float, float]:
    from sahi.predict import get_sliced_prediction

    def one(jpeg: bytes) -> Detections:
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        result = get_sliced_prediction(image, model, slice_height=SLICE, slice_width=SLICE, overlap_height_ratio=OVERLAP,
                                       overlap_width_ratio=OVERLAP, verbose=0, batch_size=batch, **options)  # fmt: skip
        preds = result.object_prediction_list
        return Detections(
            np.asarray([p.bbox.to_xyxy() for p in preds], np.float32).reshape(-1, 4),
            np.asarray([p.score.value for p in preds], np.float32),
            np.asarray([p.category.id for p in preds], np.int64),
        )

    one(jpegs[0])
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    dets = [one(j) for j in jpegs]
    seconds, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return dets, seconds, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def alternate(
    model_dir: Path, env: dict[str, str], sahi: Any, jpegs: list[bytes], rounds: int
) -> dict[str, Any]:
    """Throughput side by side: in each round ours (1 and 4 clients) and SAHI (batch 1 and 8) on the
    same images, one after the other, so that the machine's drift falls on both; per-round ratios
    and their median."""
    per_round = []
    with spawned_server(model_dir, env) as (url, pid):
        params = {"tile": "true", "tile_size": SLICE}
        for r in range(rounds):
            ours1 = len(jpegs) / served(url, pid, jpegs, params, 1)[1]
            sahi8 = len(jpegs) / sahi_run(sahi, jpegs, 8)[1]
            ours4 = len(jpegs) / served(url, pid, jpegs, params, 4)[1]
            sahi1 = len(jpegs) / sahi_run(sahi, jpegs, 1)[1]
            row = {"round": r + 1, "ours_1_client": round(ours1, 3), "ours_4_clients": round(ours4, 3),
                   "sahi_batch_1": round(sahi1, 3), "sahi_batch_8": round(sahi8, 3),
                   "ours_1_client_over_sahi_best": round(ours1 / max(sahi1, sahi8), 3),
                   "ours_4_clients_over_sahi_best": round(ours4 / max(sahi1, sahi8), 3)}  # fmt: skip
            print(json.dumps(row), flush=True)
            per_round.append(row)
    median = {k: float(np.median([r[k] for r in per_round])) for k in per_round[0] if k != "round"}
    return {"images": len(jpegs), "rounds": per_round, "median": median}


def write_table(out: Path, rows: list[dict[str, Any]]) -> str:
    """OUT/table.md from the result rows (SAHI's rows cut the same grid as ours at 256 px)."""
    lines = [
        "| method | clients | windows / image | mAP@0.5 | mAP@0.5:0.95 | recall@0.5 | images/s | CPU s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        windows = f"{r['tiles']:.1f}" if "tiles" in r else "same grid"
        lines.append(
            f"| {r['method']} | {r['clients']} | {windows} | {r['map50']:.3f} | {r['map50_95']:.3f} | "
            f"{r['recall50']:.3f} | {r['images_per_s']:.2f} | {r['cpu_s_per_image']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating speed rounds")
    parser.add_argument("--round-images", type=int, default=8, help="images per speed round")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    nc = load_manifest(args.model).nc
    data = make_images(args.images, args.size, seed=7)
    jpegs, gts = [d[0] for d in data], [(d[1], d[2]) for d in data]
    print(
        f"{len(jpegs)} images, {sum(len(b) for b, _ in gts)} objects, {sum(map(len, jpegs)) / len(jpegs) / 1e6:.1f} MB per JPEG"
    )
    rows = []
    env = {"YOLOR_MAX_TILES_PER_IMAGE": "512", "YOLOR_QUEUE_SIZE": "1024", "YOLOR_REQUEST_TIMEOUT_S": "300"}
    runs = [
        (env, "untiled", {}),
        (env, "tile=true, 256 px", {"tile": "true", "tile_size": SLICE}),
        (env, "tile=true, 256 px, nmm", {"tile": "true", "tile_size": SLICE, "tile_merge": "nmm"}),
        ({}, "tile=auto, all defaults", {"tile": "auto"}),  # windows grown to fit 64 per image
    ]
    for overrides, name, params in runs:
        with spawned_server(args.model, overrides) as (url, pid):
            for clients in (1, 4):
                dets, seconds, cpu, tiles = served(url, pid, jpegs, params, clients)
                tiles_mean = float(np.mean(tiles))
                rows.append(
                    score(f"ours {name}", gts, dets, seconds, cpu, nc, clients=clients, tiles=tiles_mean)
                )
    model = sahi_model(args.model)
    for batch in (1, 8):
        dets, seconds, cpu = sahi_run(model, jpegs, batch)
        rows.append(score(f"SAHI 256 px, batch {batch}", gts, dets, seconds, cpu, nc, clients=1))
    dets, seconds, cpu = sahi_run(model, jpegs, 8, force_postprocess_type=True)  # its GREEDYNMM / IOS kept
    rows.append(score("SAHI 256 px, batch 8, GREEDYNMM", gts, dets, seconds, cpu, nc, clients=1))
    speed = alternate(args.model, env, model, jpegs[: args.round_images], args.rounds)
    machine = f"{platform.machine()}, {host_cpu_count()} CPUs, {platform.python_version()}"
    summary = {
        "speed_rounds": speed,
        "machine": machine,
        "images": len(jpegs),
        "size": args.size,
        "conf": CONF,
        "iou": IOU,
        "rows": rows,
    }
    (args.out / "tiling.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(write_table(args.out, rows))
    print("speed, median of the rounds:", json.dumps(speed["median"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
