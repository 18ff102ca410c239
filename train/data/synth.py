"""Procedurally generated shapes: a detection dataset that needs no download, deterministic by seed.

Each image gets its own ``numpy.random.Generator`` seeded by ``(seed, split, index)``, so the
result does not depend on the number of worker processes or on generation order. Pixels are
written as PNG (lossless) and the rasterisation uses integer/fixed-point OpenCV calls only, so
decoded images and labels are identical on every machine with the same numpy and OpenCV versions.

Occlusion is tracked with an owner map (which object painted each pixel last). A new object is
placed only if every earlier object keeps at least ``min_visible`` of its full area in view, so
every painted shape is labelled, and each label is the tight box of its *visible* pixels.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from train.data.shapes import SHAPE_NAMES, render_shape

log = logging.getLogger(__name__)

GENERATOR_VERSION = "shapes-v1"
CLASS_NAMES: tuple[str, ...] = SHAPE_NAMES
SPLIT_CODES = {"train": 0, "val": 1}
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
_PLACEMENT_TRIES = 8


@dataclass(frozen=True)
class SynthOptions:
    """How images are drawn. ``size`` is the longer image side; object ``size`` (circumscribed
    diameter) is log-uniform in ``[min_size, max_frac * shorter side]``."""

    size: int = 320
    min_size: float = 12.0
    max_frac: float = 0.6
    max_objects: int = 8
    min_visible: float = 0.5

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        if not 0 < self.max_frac <= 1:
            raise ValueError(f"max_frac must be in (0, 1], got {self.max_frac}")
        if not 4 <= self.min_size <= self.max_frac * self.size * 0.75:
            raise ValueError(f"min_size must be in [4, max_frac * 0.75 * size], got {self.min_size}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")


@dataclass(frozen=True, eq=False)
class SynthImage:
    """One generated image: ``image`` (H, W, 3) uint8 RGB, ``boxes`` (N, 4) float32 xyxy pixel
    edges (a box covering pixel columns 3..7 is x1=3, x2=8), ``classes`` (N,) int64, ``owner``
    (H, W) int16 (which object each pixel shows, -1 for background) and ``visible`` (N,) float32
    (the fraction of each object's full area left in view)."""

    image: npt.NDArray[np.uint8]
    boxes: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]
    owner: npt.NDArray[np.int16]
    visible: npt.NDArray[np.float32]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that draws image ``index`` of ``split`` for dataset ``seed``."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


@functools.cache
def _photos() -> tuple[npt.NDArray[np.uint8], ...]:
    import skimage.data

    return tuple(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in _PHOTOS)


def _jitter_colours(rng: np.random.Generator, image: np.ndarray) -> npt.NDArray[np.uint8]:
    gains = rng.uniform(0.6, 1.4, size=3).astype(np.float32)
    offsets = rng.uniform(-40, 40, size=3).astype(np.float32)
    permuted = image[..., rng.permutation(3)].astype(np.float32)
    return np.clip(np.rint(permuted * gains + offsets), 0, 255).astype(np.uint8)


def _photo_crop(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.uint8]:
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    crop_h = max(8, int(ph * rng.uniform(0.25, 1.0)))
    crop_w = min(pw, max(8, round(crop_h * width / height)))
    crop_h = min(ph, max(8, round(crop_w * height / width)))
    y0, x0 = int(rng.integers(ph - crop_h + 1)), int(rng.integers(pw - crop_w + 1))
    crop = photo[y0 : y0 + crop_h, x0 : x0 + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    resized = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LINEAR_EXACT)
    return _jitter_colours(rng, resized)


def _gradient(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.uint8]:
    start, stop = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    angle = float(rng.uniform(0, 2 * math.pi))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    return np.rint(start + ramp[..., None] * (stop - start)).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.uint8]:
    grid = rng.integers(0, 256, size=(int(rng.integers(2, 12)), int(rng.integers(2, 12)), 3), dtype=np.uint8)
    return np.asarray(cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR_EXACT), np.uint8)


def _add_noise(rng: np.random.Generator, image: np.ndarray, amplitude: int) -> npt.NDArray[np.uint8]:
    noise = rng.integers(-amplitude, amplitude + 1, size=image.shape, dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.uint8]:
    """Cluttered backdrop: a photo crop, gradient or smooth colour noise, plus lines and grain."""
    kind = int(rng.integers(3))
    makers = (_photo_crop, _gradient, _smooth_noise)
    image = np.ascontiguousarray(makers[kind](rng, height, width))
    for _ in range(int(rng.integers(0, 10))):
        p1 = rng.integers(-width // 4, width + width // 4, size=2)
        p2 = rng.integers(-width // 4, width + width // 4, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        thickness = int(rng.integers(1, 4))
        cv2.line(image, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), colour, thickness, cv2.LINE_8)
    if rng.random() < 0.5:
        image = _add_noise(rng, image, int(rng.integers(4, 25)))
    return image


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> npt.NDArray[np.uint8]:
    """A random colour at L1 distance >= 120 from the mean of the pixels it will cover."""
    mean = under.astype(np.int64).sum(axis=0) // max(len(under), 1)
    for _ in range(12):
        colour = rng.integers(0, 256, size=3)
        if int(np.abs(colour - mean).sum()) >= 120:
            return colour.astype(np.uint8)
    return (255 - mean).astype(np.uint8)


class _Canvas:
    """The image being drawn, its owner map and each object's full and visible pixel counts."""

    def __init__(self, image: npt.NDArray[np.uint8], options: SynthOptions) -> None:
        self.image = image
        self.owner: npt.NDArray[np.int16] = np.full(image.shape[:2], -1, dtype=np.int16)
        self.areas: list[int] = []
        self.visible: list[int] = []
        self.classes: list[int] = []
        self.options = options

    def try_place(self, rng: np.random.Generator) -> bool:
        height, width = self.owner.shape
        class_id = int(rng.integers(len(CLASS_NAMES)))
        largest = self.options.max_frac * min(height, width)
        size = math.exp(rng.uniform(math.log(self.options.min_size), math.log(largest)))
        shape = render_shape(rng, class_id, rng.uniform(0, width), rng.uniform(0, height), size)
        y0, x0 = max(shape.top, 0), max(shape.left, 0)
        y1 = min(shape.top + shape.mask.shape[0], height)
        x1 = min(shape.left + shape.mask.shape[1], width)
        if y1 <= y0 or x1 <= x0:
            return False
        inside = shape.mask[y0 - shape.top : y1 - shape.top, x0 - shape.left : x1 - shape.left]
        area, shown = int(shape.mask.sum()), int(inside.sum())
        if shown < self.options.min_visible * area:
            return False
        owners = self.owner[y0:y1, x0:x1]
        covered = np.bincount(owners[inside] + 1, minlength=len(self.areas) + 1)[1:]
        remaining = [v - int(c) for v, c in zip(self.visible, covered, strict=True)]
        if any(r < self.options.min_visible * a for r, a in zip(remaining, self.areas, strict=True)):
            return False
        patch = self.image[y0:y1, x0:x1]
        patch[inside] = _contrasting_colour(rng, patch[inside])
        owners[inside] = len(self.areas)
        self.visible = [*remaining, shown]
        self.areas.append(area)
        self.classes.append(class_id)
        return True

    def boxes(self) -> npt.NDArray[np.float32]:
        rows = []
        for k in range(len(self.classes)):
            ys, xs = np.nonzero(self.owner == k)
            rows.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


def generate_image(rng: np.random.Generator, options: SynthOptions) -> SynthImage:
    """Draw one image (random aspect in [0.75, 4/3], longer side ``options.size``) and its labels."""
    aspect = math.exp(rng.uniform(math.log(0.75), math.log(4 / 3)))
    if aspect >= 1:
        width, height = options.size, round(options.size / aspect)
    else:
        width, height = round(options.size * aspect), options.size
    canvas = _Canvas(_background(rng, height, width), options)
    for _ in range(int(rng.integers(1, options.max_objects + 1))):
        for _attempt in range(_PLACEMENT_TRIES):
            if canvas.try_place(rng):
                break
    image = canvas.image
    if rng.random() < 0.5:
        image = _add_noise(rng, image, int(rng.integers(1, 7)))
    return SynthImage(
        image=image,
        boxes=canvas.boxes(),
        classes=np.asarray(canvas.classes, dtype=np.int64),
        owner=canvas.owner,
        visible=(np.asarray(canvas.visible) / np.maximum(canvas.areas, 1)).astype(np.float32),
    )


def yolo_label_text(boxes: np.ndarray, classes: np.ndarray, height: int, width: int) -> str:
    """YOLO label file text: one ``cls cx cy w h`` line per box, normalised, 6 decimals."""
    lines = []
    for (x1, y1, x2, y2), class_id in zip(boxes.tolist(), classes.tolist(), strict=True):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        lines.append(f"{class_id} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n")
    return "".join(lines)


def _write_one(job: tuple[Path, str, int, int, SynthOptions]) -> list[int]:
    out_dir, split, seed, index, options = job
    sample = generate_image(image_rng(seed, split, index), options)
    stem = f"{index:06d}"
    bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
    image_path = out_dir / split / "images" / f"{stem}.png"
    if not cv2.imwrite(str(image_path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"could not write {image_path}")
    text = yolo_label_text(sample.boxes, sample.classes, *sample.image.shape[:2])
    (out_dir / split / "labels" / f"{stem}.txt").write_text(text)
    return sample.classes.tolist()


def write_dataset(
    out_dir: str | Path,
    *,
    train: int,
    val: int,
    seed: int,
    options: SynthOptions | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, list[int]]:
    """Write ``train`` + ``val`` images in YOLO layout under ``out_dir`` and ``dataset.json``.

    Layout: ``{train,val}/images/NNNNNN.png``, ``{train,val}/labels/NNNNNN.txt`` and
    ``dataset.json`` ``{"names", "train", "val", "seed", "generator", "options"}``. The output
    does not depend on ``workers``; with ``workers > 1`` the processes are spawned, so a calling
    script needs the usual ``if __name__ == "__main__":`` guard. Refuses to write into an existing
    dataset unless ``overwrite`` (which deletes only ``train/``, ``val/`` and ``dataset.json`` there).
    Returns the number of objects per class for each split.
    """
    options = options or SynthOptions()
    root = Path(out_dir)
    existing = [root / p for p in ("train", "val", "dataset.json") if (root / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists (--overwrite replaces the dataset)")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for split in SPLIT_CODES:
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
    sizes = (("train", train), ("val", val))
    jobs = [(root, split, seed, i, options) for split, n in sizes for i in range(n)]
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: forking a process that runs threads (torch, BLAS) can deadlock
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            results = list(pool.map(_write_one, jobs, chunksize=16))
    else:
        results = [_write_one(job) for job in jobs]
    counts = {split: [0] * len(CLASS_NAMES) for split in SPLIT_CODES}
    for (_, split, *_rest), classes in zip(jobs, results, strict=True):
        for class_id in classes:
            counts[split][class_id] += 1
    meta = {
        "names": list(CLASS_NAMES),
        "train": "train",
        "val": "val",
        "seed": seed,
        "generator": GENERATOR_VERSION,
        "options": asdict(options),
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return counts
