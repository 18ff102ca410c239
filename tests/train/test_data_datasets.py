"""Dataset readers: YOLO folders, COCO json, dataset.json, and a clear error for each kind of bad data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from train.data.datasets import DatasetError, load_dataset, read_coco_json, read_yolo_folder

pytestmark = pytest.mark.unit

NAMES = ["a", "b", "c"]


def write_image(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Write a random RGB image as PNG; return its RGB pixels."""
    rgb = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def yolo_folder(root: Path, labels: dict[str, str | None], height: int = 40, width: int = 80) -> Path:
    for i, (stem, text) in enumerate(labels.items()):
        write_image(root / "images" / f"{stem}.png", height, width, seed=i)
        if text is not None:
            (root / "labels").mkdir(parents=True, exist_ok=True)
            (root / "labels" / f"{stem}.txt").write_text(text)
    return root


def test_yolo_labels_become_pixel_xyxy_and_images_rgb(tmp_path: Path) -> None:
    folder = yolo_folder(tmp_path, {"x": "1 0.5 0.5 0.5 0.25\n\n  \n2 0.25 0.75 0.1 0.5\n"})
    dataset = read_yolo_folder(folder, NAMES)
    sample = dataset[0]
    assert sample.image.dtype == np.uint8 and sample.image.shape == (40, 80, 3)
    np.testing.assert_array_equal(sample.image, write_image(tmp_path / "ref.png", 40, 80, seed=0))
    np.testing.assert_allclose(sample.boxes, [[20, 15, 60, 25], [16, 20, 24, 40]], atol=1e-4)
    assert sample.boxes.dtype == np.float32 and sample.classes.dtype == np.int64
    assert sample.classes.tolist() == [1, 2] and sample.image_id == 0 and sample.path.name == "x.png"


def test_missing_and_empty_label_files_mean_no_objects(tmp_path: Path) -> None:
    dataset = read_yolo_folder(yolo_folder(tmp_path, {"a": None, "b": "", "c": "\n\n"}), NAMES)
    assert len(dataset) == 3
    for sample in dataset:
        assert sample.boxes.shape == (0, 4) and sample.classes.shape == (0,)


def test_coordinates_within_tolerance_are_clipped(tmp_path: Path) -> None:
    dataset = read_yolo_folder(yolo_folder(tmp_path, {"a": "0 0.2502 0.5 0.5008 1.0005\n"}), NAMES)
    np.testing.assert_allclose(dataset.records[0].boxes, [[0, 0, 0.5006, 1]], atol=1e-6)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "expected 5 columns"),
        ("0 0.5 0.5 0.2 0.2 0.1", "expected 5 columns"),
        ("0 0.5 abc 0.2 0.2", "non-numeric"),
        ("0 0.5 nan 0.2 0.2", "non-numeric"),
        ("3 0.5 0.5 0.2 0.2", "class id 3 out of range for 3 classes"),
        ("-1 0.5 0.5 0.2 0.2", "out of range"),
        ("1.5 0.5 0.5 0.2 0.2", "out of range"),
        ("0 0.5 0.5 0 0.2", "width and height must be > 0"),
        ("0 0.5 0.5 0.2 -0.1", "width and height must be > 0"),
        ("0 0.95 0.5 0.2 0.2", "outside the image"),
        ("0 0.5 -0.01 0.2 0.01", "outside the image"),
    ],
)
def test_bad_yolo_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    folder = yolo_folder(tmp_path, {"img": f"0 0.5 0.5 0.2 0.2\n\n{line}\n"})
    with pytest.raises(DatasetError, match=message) as info:
        read_yolo_folder(folder, NAMES)
    assert f"{folder / 'labels' / 'img.txt'}:3:" in str(info.value)


def test_unreadable_image_and_colliding_stems(tmp_path: Path) -> None:
    folder = yolo_folder(tmp_path / "one", {"good": ""})
    (folder / "images" / "broken.png").write_bytes(b"not a png")
    dataset = read_yolo_folder(folder, NAMES)
    with pytest.raises(DatasetError, match=r"broken\.png: cannot read image"):
        dataset[0]
    folder = yolo_folder(tmp_path / "two", {"x": ""})
    write_image(folder / "images" / "x.jpg", 8, 8)
    with pytest.raises(DatasetError, match=r"x\.png: same stem"):
        read_yolo_folder(folder, NAMES)


def coco(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "images": [
            {"id": 10, "file_name": "p.png", "width": 80, "height": 40},
            {"id": 4, "file_name": "q.png", "width": 80, "height": 40},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 12, "name": "twelve"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 12, "bbox": [0, 0, 80, 40]},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            {"id": 4, "image_id": 4, "category_id": 3, "bbox": [60, 30, 20.05, 10]},
        ],
    }
    data.update(overrides)
    return data


def coco_files(root: Path, data: dict[str, Any]) -> Path:
    for name in ("p.png", "q.png"):
        write_image(root / "imgs" / name, 40, 80)
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_categories_map_to_contiguous_ids_in_id_order(tmp_path: Path) -> None:
    dataset = read_coco_json(coco_files(tmp_path, coco()), tmp_path / "imgs")
    assert dataset.names == ("three", "seven", "twelve")
    first, second = dataset[0], dataset[1]
    assert (first.image_id, second.image_id) == (10, 4)
    np.testing.assert_allclose(first.boxes, [[10, 5, 30, 15], [0, 0, 80, 40]])
    assert first.classes.tolist() == [1, 2]  # the iscrowd annotation is not a training label ...
    crowd_boxes, crowd_classes = first.crowd  # ... but kept for evaluation to ignore
    np.testing.assert_allclose(crowd_boxes, [[1, 1, 6, 6]])
    assert crowd_classes.tolist() == [0] and second.crowd is None
    np.testing.assert_allclose(second.boxes, [[60, 30, 80, 40]])  # 0.05 px over the edge: clipped
    assert second.classes.tolist() == [0]


@pytest.mark.parametrize(
    ("section", "index", "key", "value", "message"),
    [
        ("images", 1, "id", 10, r"images\[1\]: duplicate image id 10"),
        ("images", 0, "file_name", None, r"images\[0\]: missing 'file_name'"),
        ("annotations", 0, "image_id", 99, r"annotations\[0\] \(id 1\): unknown image id 99"),
        ("annotations", 1, "category_id", 5, r"annotations\[1\] \(id 2\): unknown category id 5"),
        ("annotations", 1, "bbox", [1, 1, 0, 3], r"annotations\[1\] .*must be > 0"),
        ("annotations", 1, "bbox", [1, 1, 3], r"annotations\[1\] .*4 numbers"),
        ("annotations", 1, "bbox", [50, 1, 40, 3], r"annotations\[1\] .*outside the image"),
    ],
)
def test_bad_coco_data_names_file_and_entry(
    tmp_path: Path, section: str, index: int, key: str, value: Any, message: str
) -> None:
    data = coco()
    entry = data[section][index]
    if value is None:
        del entry[key]
    else:
        entry[key] = value
    path = coco_files(tmp_path, data)
    with pytest.raises(DatasetError, match=message) as info:
        read_coco_json(path, tmp_path / "imgs")
    assert str(path) in str(info.value)


def test_coco_image_size_must_match_the_json(tmp_path: Path) -> None:
    data = coco()
    data["images"][1]["height"] = 41
    dataset = read_coco_json(coco_files(tmp_path, data), tmp_path / "imgs")
    with pytest.raises(DatasetError, match=r"q\.png: image is 40x80 .* says 41x80"):
        dataset[1]


def test_load_dataset_accepts_description_yolo_folder_and_coco(tmp_path: Path) -> None:
    yolo_folder(tmp_path / "d" / "train", {"a": "0 0.5 0.5 0.5 0.5\n"})
    yolo_folder(tmp_path / "d" / "val", {"b": "", "c": "2 0.5 0.5 0.5 0.5\n"})
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"names": NAMES, "train": "train", "val": "val"}))
    val = load_dataset(tmp_path / "d", "val")
    assert len(val) == 2 and val.names == tuple(NAMES)
    assert len(load_dataset(tmp_path / "d" / "dataset.json", "train")) == 1
    with pytest.raises(DatasetError, match="split 'test'"):
        load_dataset(tmp_path / "d", "test")

    # a bare YOLO tree: names from classes.txt next to the split folders
    (tmp_path / "d" / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="class names are required"):
        load_dataset(tmp_path / "d", "val")
    (tmp_path / "d" / "classes.txt").write_text("a\nb\nc\n")
    assert load_dataset(tmp_path / "d", "val").names == tuple(NAMES)
    assert len(load_dataset(tmp_path / "d" / "train", names=NAMES)) == 1
    with pytest.raises(DatasetError, match="out of range for 2 classes"):
        load_dataset(tmp_path / "d", "val", names=["a", "b"])

    path = coco_files(tmp_path / "c", coco())
    assert load_dataset(path, images_dir=tmp_path / "c" / "imgs").names == ("three", "seven", "twelve")
    with pytest.raises(DatasetError, match="neither a COCO json"):
        (tmp_path / "x.json").write_text("{}")
        load_dataset(tmp_path / "x.json")
