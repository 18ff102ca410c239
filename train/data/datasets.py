"""Detection datasets on disk: YOLO folders, COCO json and the synthetic ``dataset.json`` layout.

A sample is an RGB uint8 ``(H, W, 3)`` image, ``(N, 4)`` float32 xyxy boxes in that image's
pixels, ``(N,)`` int64 class ids in ``0 .. nc-1`` and the image's id and path. Labels are read and
validated when the dataset is opened; images are read when a sample is requested.

Every problem in the data raises :class:`DatasetError` naming the file and the line (YOLO) or the
list entry (COCO).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
COORD_TOLERANCE = 1e-3  # box corners this far outside the image are clipped, further is an error
NAMES_FILE = "classes.txt"


class DatasetError(ValueError):
    """Malformed or inconsistent dataset; the message names the file and line or entry."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One image and its labels: ``image`` (H, W, 3) uint8 RGB, ``boxes`` (N, 4) float32 xyxy
    pixels, ``classes`` (N,) int64. ``crowd`` is (boxes (K, 4), classes (K,)) of COCO crowd regions:
    not trained on; evaluation ignores detections on them, as COCO does."""

    image: npt.NDArray[np.uint8]
    boxes: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]
    image_id: int
    path: Path
    crowd: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """The labels of one image, without its pixels.

    ``boxes`` are (N, 4) float32 xyxy, normalised to [0, 1] when ``normalised`` (YOLO) else in
    pixels (COCO, whose json also gives ``size_hw``, checked against the image when it is read).
    """

    path: Path
    image_id: int
    boxes: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]
    normalised: bool
    size_hw: tuple[int, int] | None = None
    crowd: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None  # COCO iscrowd, pixels


def read_image(path: Path) -> npt.NDArray[np.uint8]:
    """Read an image file as (H, W, 3) uint8 RGB (grayscale and 16-bit files are converted)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: cannot read image (missing, truncated or not an image)")
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)


class DetectionDataset:
    """Class ``names`` and one :class:`ImageRecord` per image; indexing reads the image."""

    def __init__(self, names: Sequence[str], records: Sequence[ImageRecord], source: Path) -> None:
        self.names = tuple(names)
        self.records = tuple(records)
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image = read_image(record.path)
        height, width = image.shape[:2]
        boxes = record.boxes
        if record.normalised:
            boxes = boxes * np.asarray([width, height, width, height], dtype=np.float32)
        elif record.size_hw is not None and record.size_hw != (height, width):
            raise DatasetError(
                f"{record.path}: image is {height}x{width} (HxW) but {self.source} says "
                f"{record.size_hw[0]}x{record.size_hw[1]}"
            )
        return Sample(
            image, boxes.astype(np.float32), record.classes.copy(), record.image_id, record.path, record.crowd
        )

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return f"DetectionDataset({self.source}, {len(self)} images, {len(self.names)} classes)"


def _clip_box(corners: list[float], limits: tuple[float, float], where: str) -> list[float]:
    """Clip xyxy ``corners`` to ``[0, limit]``; more than ``COORD_TOLERANCE * limit`` outside is an error."""
    width, height = limits
    x1, y1, x2, y2 = corners
    if min(x1 / width, y1 / height) < -COORD_TOLERANCE or max(x2 / width, y2 / height) > 1 + COORD_TOLERANCE:
        raise DatasetError(f"{where}: box {corners} lies outside the image ({width} x {height})")
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(x2, width), min(y2, height)]


def _class_id(value: float, nc: int, where: str) -> int:
    if not value.is_integer() or not 0 <= value < nc:
        raise DatasetError(f"{where}: class id {value:g} out of range for {nc} classes (0..{nc - 1})")
    return int(value)


def parse_yolo_labels(path: Path, nc: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Parse a YOLO label file (``cls cx cy w h`` normalised per line; blank lines ignored).

    Returns (N, 4) float32 normalised xyxy boxes (clipped to [0, 1]) and (N,) int64 classes.
    A missing file means no objects.
    """
    if not path.exists():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read label file: {e}") from None
    boxes, classes = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            raise DatasetError(f"{where}: expected 5 columns 'class cx cy w h', got {len(fields)}")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            values = [math.nan]
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f"{where}: non-numeric value in {line.strip()!r}")
        class_id = _class_id(values[0], nc, where)
        cx, cy, w, h = values[1:]
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: width and height must be > 0, got w={w:g} h={h:g}")
        boxes.append(_clip_box([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], (1.0, 1.0), where))
        classes.append(class_id)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def read_yolo_folder(folder: str | Path, names: Sequence[str]) -> DetectionDataset:
    """A YOLO split: ``folder/images/*`` with labels ``folder/labels/<image stem>.txt``.

    Images are taken in sorted file-name order and numbered 0, 1, ... as image ids. A missing or
    empty label file means the image has no objects.
    """
    folder = Path(folder)
    images_dir = folder / "images"
    if not images_dir.is_dir():
        raise DatasetError(f"{folder}: no images/ folder")
    if not names:
        raise DatasetError(f"{folder}: class names are required (pass names or add {NAMES_FILE})")
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    stems: dict[str, Path] = {}
    records = []
    for index, path in enumerate(paths):
        if path.stem in stems:
            raise DatasetError(f"{path}: same stem as {stems[path.stem]}; their labels would collide")
        stems[path.stem] = path
        boxes, classes = parse_yolo_labels(folder / "labels" / f"{path.stem}.txt", len(names))
        records.append(ImageRecord(path, index, boxes, classes, normalised=True))
    return DetectionDataset(names, records, folder)


def _field(entry: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{where}: missing {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _coco_categories(data: dict[str, Any], source: str) -> tuple[list[str], dict[int, int]]:
    categories = _field(data, "categories", list, source)
    ids = [_field(c, "id", int, f"{source}: categories[{i}]") for i, c in enumerate(categories)]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{source}: duplicate category ids")
    ordered = sorted(range(len(ids)), key=ids.__getitem__)
    names = [str(_field(categories[i], "name", str, f"{source}: categories[{i}]")) for i in ordered]
    return names, {ids[i]: rank for rank, i in enumerate(ordered)}


def read_coco_json(
    path: str | Path, images_dir: str | Path | None = None, data: dict[str, Any] | None = None
) -> DetectionDataset:
    """A COCO detection json; ``file_name`` is resolved against ``images_dir`` (default: the json's folder).

    Categories map to contiguous class ids 0..nc-1 in ascending category-id order, names from the
    json. ``iscrowd`` annotations are skipped; ``bbox`` [x, y, w, h] becomes xyxy pixels, clipped to
    the image when within ``COORD_TOLERANCE`` of its size. Image ids are the json's.
    ``data`` is the already parsed json, if the caller has it.
    """
    path = Path(path)
    root = Path(images_dir) if images_dir is not None else path.parent
    if data is None:
        data = _read_json(path)
    source = str(path)
    names, class_of = _coco_categories(data, source)
    images: dict[int, tuple[Path, int, int]] = {}
    for i, entry in enumerate(_field(data, "images", list, source)):
        where = f"{source}: images[{i}]"
        image_id = _field(entry, "id", int, where)
        if image_id in images:
            raise DatasetError(f"{where}: duplicate image id {image_id}")
        size = (_field(entry, "width", int, where), _field(entry, "height", int, where))
        images[image_id] = (root / _field(entry, "file_name", str, where), *size)
    # per image: (boxes, classes) of the objects, and of the crowd regions (iscrowd)
    objects: dict[int, tuple[list[list[float]], list[int]]] = {image_id: ([], []) for image_id in images}
    crowds: dict[int, tuple[list[list[float]], list[int]]] = {image_id: ([], []) for image_id in images}
    for i, ann in enumerate(_field(data, "annotations", list, source)):
        where = f"{source}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else None})"
        labels = crowds if isinstance(ann, dict) and ann.get("iscrowd") else objects
        image_id = _field(ann, "image_id", int, where)
        if image_id not in images:
            raise DatasetError(f"{where}: unknown image id {image_id}")
        category = _field(ann, "category_id", int, where)
        if category not in class_of:
            raise DatasetError(f"{where}: unknown category id {category}")
        bbox = _field(ann, "bbox", list, where)
        if len(bbox) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox):
            raise DatasetError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: bbox width and height must be > 0, got w={w:g} h={h:g}")
        _, width, height = images[image_id]
        labels[image_id][0].append(_clip_box([x, y, x + w, y + h], (width, height), where))
        labels[image_id][1].append(class_of[category])

    def arrays(boxes: list, classes: list) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)

    records = [
        ImageRecord(
            image_path,
            image_id,
            *arrays(*objects[image_id]),
            normalised=False,
            size_hw=(height, width),
            crowd=arrays(*crowds[image_id]) if crowds[image_id][0] else None,
        )
        for image_id, (image_path, width, height) in images.items()
    ]
    return DetectionDataset(names, records, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot read json: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a json object at the top level")
    return data


def _names_file(folder: Path) -> list[str] | None:
    for candidate in (folder / NAMES_FILE, folder.parent / NAMES_FILE):
        if candidate.is_file():
            return [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    return None


def _from_description(
    path: Path, data: dict[str, Any], split: str, images_dir: Path | None
) -> DetectionDataset:
    names = _field(data, "names", list, str(path))
    if not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: 'names' must be a non-empty list of strings")
    target = path.parent / _field(data, split, str, f"{path} (split {split!r})")
    if target.suffix == ".json":
        coco = read_coco_json(target, images_dir)
        if list(coco.names) != names:
            raise DatasetError(f"{path}: names {names} differ from the categories of {target}")
        return coco
    return read_yolo_folder(target, names)


def load_dataset(
    path: str | Path,
    split: str = "train",
    *,
    names: Sequence[str] | None = None,
    images_dir: str | Path | None = None,
) -> DetectionDataset:
    """Open a dataset given as any of:

    - a description json ``{"names": [...], "train": "train", "val": "val", ...}`` (what
      ``yolor data synth`` writes), or a folder holding one as ``dataset.json``: ``split`` picks
      the entry, a folder (YOLO layout) or a COCO json, relative to the description's folder;
    - a YOLO folder with ``images/`` (and ``labels/``), or with ``<split>/images/``: class names
      from ``names`` or a ``classes.txt`` (one per line) in that folder or its parent;
    - a COCO json (``split`` is ignored); ``images_dir`` defaults to the json's folder.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "dataset.json").is_file():
            return load_dataset(path / "dataset.json", split, names=names, images_dir=images_dir)
        folder = path if (path / "images").is_dir() else path / split
        if not (folder / "images").is_dir():
            raise DatasetError(f"{path}: neither images/ nor {split}/images/ found")
        names = list(names) if names else _names_file(folder)
        if not names:
            raise DatasetError(f"{folder}: class names are required (pass names or add {NAMES_FILE})")
        return read_yolo_folder(folder, names)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file or folder")
    data = _read_json(path)
    if "images" in data and "annotations" in data:
        return read_coco_json(path, images_dir, data)
    if "names" in data:
        return _from_description(path, data, split, Path(images_dir) if images_dir else None)
    raise DatasetError(f"{path}: neither a COCO json (images, annotations) nor a dataset description (names)")
