"""Each output format from one known detection, against numbers worked out by hand; and
predictions.jsonl's resume rule (a video counts once its summary is there)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest

from predict.sources import Source
from predict.writers import CocoFile, LabelStudioFile, PredictionsLog, YoloLabels, completed_records

NAMES = ["person", "car"]
# a 200 x 100 image with one car from (20, 10) to (70, 60)
CAR = {"box": [20.0, 10.0, 70.0, 60.0], "score": 0.875, "class_id": 1, "class_name": "car"}
IMAGE = {"width": 200, "height": 100, "detections": [CAR]}


def _source(tmp_path: Path, name: str) -> Source:
    return Source(tmp_path / "in" / name, PurePosixPath(name))


def test_coco_bbox_is_xywh_with_the_model_class_id(tmp_path):
    coco = CocoFile(tmp_path)
    coco.add(_source(tmp_path, "a/b.jpg"), IMAGE)
    coco.add(_source(tmp_path, "v.mp4"), {"frame": 3, "pts_s": 0.3, **IMAGE, "detections": []})
    coco.add(_source(tmp_path, "v.mp4"), {"summary": {}})
    coco.close(NAMES, "demo onnxruntime fp32")
    doc = json.loads((tmp_path / "coco.json").read_text())
    assert doc["images"] == [
        {"id": 1, "file_name": str(tmp_path / "in/a/b.jpg"), "width": 200, "height": 100},
        {"id": 2, "file_name": str(tmp_path / "in/v.mp4"), "width": 200, "height": 100, "frame": 3},
    ]
    assert doc["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20.0, 10.0, 50.0, 50.0], "area": 2500.0,
         "iscrowd": 0, "score": 0.875}
    ]  # fmt: skip
    assert doc["categories"] == [{"id": 0, "name": "person"}, {"id": 1, "name": "car"}]


def test_yolo_labels_are_normalised_centre_and_size_with_the_score_last(tmp_path):
    yolo = YoloLabels(tmp_path)
    yolo.add(_source(tmp_path, "a/b.jpg"), IMAGE)
    yolo.add(_source(tmp_path, "v.mp4"), {"frame": 12, "pts_s": 1.2, **IMAGE})
    yolo.add(_source(tmp_path, "empty.png"), {**IMAGE, "detections": []})
    # centre (45, 35) / (200, 100) = (0.225, 0.35); size (50, 50) / (200, 100) = (0.25, 0.5)
    assert (tmp_path / "labels/a/b.txt").read_text() == "1 0.225000 0.350000 0.250000 0.500000 0.87500\n"
    assert (tmp_path / "labels/v/000012.txt").read_text() == (tmp_path / "labels/a/b.txt").read_text()
    assert (tmp_path / "labels/empty.txt").read_text() == ""


def test_label_studio_rectangles_in_percent_of_the_image(tmp_path):
    studio = LabelStudioFile(tmp_path)
    studio.add(_source(tmp_path, "a/b.jpg"), IMAGE)
    studio.add(_source(tmp_path, "v.mp4"), {"frame": 0, "pts_s": 0.0, **IMAGE})
    studio.close(NAMES, "demo onnxruntime fp32")
    [task] = json.loads((tmp_path / "labelstudio.json").read_text())  # the video is left out
    assert task["data"] == {"image": str(tmp_path / "in/a/b.jpg")}
    [prediction] = task["predictions"]
    assert (prediction["model_version"], prediction["score"]) == ("demo onnxruntime fp32", 0.875)
    [result] = prediction["result"]
    assert result["type"] == "rectanglelabels" and result["score"] == 0.875
    assert (result["original_width"], result["original_height"]) == (200, 100)
    # x 20/200 = 10 %, y 10/100 = 10 %, width 50/200 = 25 %, height 50/100 = 50 %
    assert result["value"].pop("rectanglelabels") == ["car"]
    assert result["value"] == pytest.approx(
        {"x": 10.0, "y": 10.0, "width": 25.0, "height": 50.0, "rotation": 0}
    )


def test_resume_keeps_complete_sources_only(tmp_path):
    lines = [
        {"source": "/a.jpg", **IMAGE},
        {"source": "/v.mp4", "frame": 0, "pts_s": 0.0, **IMAGE},
        {"source": "/v.mp4", "summary": {"frames_read": 1}},
        {"source": "/w.mp4", "frame": 0, "pts_s": 0.0, **IMAGE},  # no summary: run again
    ]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"source": "/b.jp')  # torn
    assert completed_records(path) == lines[:3]
    log = PredictionsLog(tmp_path, resume=True)
    log.close()
    assert log.done == {"/a.jpg", "/v.mp4"}
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:3]


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"source": "/a.jpg"}\n')
    with pytest.raises(FileExistsError, match="--resume"):
        PredictionsLog(tmp_path, resume=False)
