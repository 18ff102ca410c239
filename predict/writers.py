"""The files `yolor predict` writes into its output folder.

predictions.jsonl is the record of the run: one line per image, per processed video frame, and a
summary line per video, appended and flushed as results arrive, so a run that stops keeps what it
did and `--resume` continues it (a video counts only once its summary is written). errors.jsonl has
one line per failed source of the last run. The format writers (COCO, YOLO, Label Studio) are fed
the same records, the resumed ones first.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import IO, Any

from predict.engine import Record
from predict.sources import Source

log = logging.getLogger("yolor")

PREDICTIONS, ERRORS = "predictions.jsonl", "errors.jsonl"
FORMATS = ("jsonl", "coco", "yolo", "labelstudio")


def _line(record: Record) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def completed_records(path: Path) -> list[Record]:
    """The lines of predictions.jsonl that belong to complete sources, in file order: an image's
    line; a video's lines once its summary is there. A torn last line (a killed run) is dropped."""
    records: list[Record] = []
    done: set[str] = set()
    with path.open() as f:
        for text in f:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "source" not in record:
                continue
            records.append(record)
            if "frame" not in record:  # an image's line, or a video's summary
                done.add(record["source"])
    return [r for r in records if r["source"] in done]


class PredictionsLog:
    """predictions.jsonl, appended line by line. With `resume`, the lines of incomplete sources (a
    video without its summary) are dropped first: those sources run again."""

    def __init__(self, out: Path, *, resume: bool) -> None:
        self.path = out / PREDICTIONS
        self.kept: list[Record] = []
        if resume and self.path.exists():
            self.kept = completed_records(self.path)
            partial = self.path.with_suffix(".jsonl.tmp")
            partial.write_text("".join(_line(r) for r in self.kept))
            os.replace(partial, self.path)
        elif self.path.exists() and self.path.stat().st_size:
            raise FileExistsError(f"{self.path} exists: pass --resume to continue it, or another --out")
        self._file: IO[str] = self.path.open("a")

    @property
    def done(self) -> set[str]:
        return {r["source"] for r in self.kept}

    def write(self, source: Source, record: Record) -> None:
        self._file.write(_line({"source": source.key, **record}))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ErrorLog:
    """errors.jsonl: `{source, error: {code, message}}` per failed source (of this run only)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ERRORS
        self._file: IO[str] = self.path.open("w")
        self.count = 0

    def write(self, key: str, code: str, message: str) -> None:
        self._file.write(_line({"source": key, "error": {"code": code, "message": message}}))
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        self._file.close()


class YoloLabels:
    """labels/<name>.txt per image (its suffix replaced), labels/<name without suffix>/<frame>.txt
    per video frame: `class cx cy w h score`, the box normalised by the image size. An image
    without detections gets an empty file (it was run)."""

    def __init__(self, out: Path) -> None:
        self.root = out / "labels"

    def add(self, source: Source, record: Record) -> None:
        if "summary" in record:
            return
        if "frame" in record:
            path = self.root / source.name.with_suffix("") / f"{record['frame']:06d}.txt"
        else:
            path = self.root / source.name.with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(yolo_line(d, record["width"], record["height"]) for d in record["detections"])
        )

    def close(self, class_names: list[str], model_version: str) -> None:
        pass


def yolo_line(detection: dict[str, Any], width: int, height: int) -> str:
    x1, y1, x2, y2 = detection["box"]
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return f"{detection['class_id']} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {detection['score']:.5f}\n"


class CocoFile:
    """coco.json: `images` (id, file_name, width, height; `frame` for a video's), `annotations` in
    COCO's results form (image_id, category_id, bbox [x, y, w, h] pixels, score; with id, area and
    iscrowd so COCO tools load it as a dataset too) and `categories` from the model's class names,
    `category_id` being the model's class id. Written at the end."""

    def __init__(self, out: Path) -> None:
        self.path = out / "coco.json"
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, source: Source, record: Record) -> None:
        if "summary" in record:
            return
        image_id = len(self.images) + 1
        image = {
            "id": image_id,
            "file_name": source.key,
            "width": record["width"],
            "height": record["height"],
        }
        if "frame" in record:
            image["frame"] = record["frame"]
        self.images.append(image)
        for d in record["detections"]:
            bbox = coco_bbox(d["box"])
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": d["class_id"],
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], 4),
                    "iscrowd": 0,
                    "score": d["score"],
                }
            )

    def close(self, class_names: list[str], model_version: str) -> None:
        categories = [{"id": i, "name": name} for i, name in enumerate(class_names)]
        document = {
            "info": {"description": "yolor predict", "model_version": model_version},
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        }
        self.path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
        log.info("wrote %s (%d images, %d detections)", self.path, len(self.images), len(self.annotations))


def coco_bbox(box: list[float]) -> list[float]:
    """[x1, y1, x2, y2] -> COCO's [x, y, width, height] (pixels)."""
    x1, y1, x2, y2 = box
    return [x1, y1, round(x2 - x1, 4), round(y2 - y1, 4)]


class LabelStudioFile:
    """labelstudio.json: one task per image (`data.image`: the source path) with a prediction of
    `rectanglelabels` results in percent of the image, each with its score. Videos are left out
    (Label Studio's video boxes are keyframe tracks, which per-frame detections are not)."""

    def __init__(self, out: Path, from_name: str = "label", to_name: str = "image") -> None:
        self.path = out / "labelstudio.json"
        self.from_name, self.to_name = from_name, to_name
        self.tasks: list[tuple[Source, Record]] = []
        self.videos: set[str] = set()

    def add(self, source: Source, record: Record) -> None:
        if "frame" in record or "summary" in record:
            self.videos.add(source.key)
        else:
            self.tasks.append((source, record))

    def close(self, class_names: list[str], model_version: str) -> None:
        tasks = [self.task(s, r, model_version) for s, r in self.tasks]
        self.path.write_text(json.dumps(tasks, indent=1) + "\n")
        log.info("wrote %s (%d tasks)", self.path, len(tasks))
        if self.videos:
            log.warning("%s: %d videos left out (Label Studio takes video boxes as keyframe tracks)",
                        self.path.name, len(self.videos))  # fmt: skip

    def task(self, source: Source, record: Record, model_version: str) -> dict[str, Any]:
        width, height = record["width"], record["height"]
        results = []
        for i, d in enumerate(record["detections"]):
            value = labelstudio_value(d["box"], width, height)
            results.append(
                {
                    "id": f"r{i}",
                    "type": "rectanglelabels",
                    "from_name": self.from_name,
                    "to_name": self.to_name,
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": value | {"rectanglelabels": [d["class_name"]]},
                    "score": d["score"],
                }
            )
        scores = [d["score"] for d in record["detections"]]
        score = round(sum(scores) / len(scores), 5) if scores else 0.0
        prediction = {"model_version": model_version, "score": score, "result": results}
        return {"data": {self.to_name: source.key}, "predictions": [prediction]}


def labelstudio_value(box: list[float], width: int, height: int) -> dict[str, float]:
    """[x1, y1, x2, y2] pixels -> Label Studio's top-left x, y, width, height in percent."""
    x1, y1, x2, y2 = box
    return {
        "x": 100 * x1 / width,
        "y": 100 * y1 / height,
        "width": 100 * (x2 - x1) / width,
        "height": 100 * (y2 - y1) / height,
        "rotation": 0,
    }


FormatWriter = YoloLabels | CocoFile | LabelStudioFile


def format_writers(out: Path, formats: list[str]) -> list[FormatWriter]:
    made: dict[str, FormatWriter] = {}
    for name in formats:
        if name == "coco":
            made[name] = CocoFile(out)
        elif name == "yolo":
            made[name] = YoloLabels(out)
        elif name == "labelstudio":
            made[name] = LabelStudioFile(out)
    return list(made.values())


def source_of(key: str, known: dict[str, Source]) -> Source:
    """The source a resumed line names: this run's, or (not given this time) named by its path."""
    if key in known:
        return known[key]
    path = Path(key)
    return Source(path, PurePosixPath(path.relative_to(path.anchor).as_posix()))
