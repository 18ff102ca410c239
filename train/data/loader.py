"""The torch side of the data pipeline: a ``Dataset`` of augmented (train) or letterboxed (val)
examples, ``collate`` (the tensors the YOLOR loss consumes) and ``make_loaders``.

Every training example is drawn with its own generator seeded by ``(seed, epoch, index)``, so the
output does not depend on the number of ``DataLoader`` workers or the order they run in. The epoch
travels with the index: :class:`EpochSampler` yields ``(epoch, index)`` keys (and counts epochs
itself), which also works with persistent workers; a plain int index uses ``DetectionData.epoch``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from service.processing import Letterbox, to_input_tensor
from train.data.augment import AugmentConfig, Example, augment, val_transform
from train.data.datasets import DatasetError, DetectionDataset, Sample, load_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Item:
    """One model input: ``image`` (S, S, 3) uint8 RGB, ``boxes`` (N, 4) float32 xyxy in its pixels,
    ``classes`` (N,) int64. Validation items also carry the ``Letterbox`` and the original-image
    labels (``original_boxes`` in original pixels)."""

    image: npt.NDArray[np.uint8]
    boxes: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]
    image_id: int
    path: Path
    letterbox: Letterbox | None = None
    original_boxes: npt.NDArray[np.float32] | None = None
    original_classes: npt.NDArray[np.int64] | None = None
    original_crowd: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None


@dataclass(frozen=True, eq=False)
class Batch:
    """``images`` (B, 3, S, S) float32 in [0, 1]; ``targets`` (M, 6) float32 rows
    ``[image_index, class, cx, cy, w, h]`` normalised by the input width/height (the official YOLOR
    target layout). Validation batches fill ``letterboxes``, ``original_boxes``,
    ``original_classes`` and ``original_crowd`` (one entry per image), training batches leave them
    empty."""

    images: torch.Tensor
    targets: torch.Tensor
    image_ids: list[int]
    paths: list[Path]
    letterboxes: list[Letterbox] = field(default_factory=list)
    original_boxes: list[npt.NDArray[np.float32]] = field(default_factory=list)
    original_classes: list[npt.NDArray[np.int64]] = field(default_factory=list)
    original_crowd: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None] = field(
        default_factory=list
    )

    def __len__(self) -> int:
        return len(self.image_ids)


def _example(sample: Sample) -> Example:
    return Example(sample.image, sample.boxes, sample.classes)


class DetectionData(Dataset[Item]):
    """``dataset`` as model inputs of ``size`` x ``size``.

    ``train=True``: :func:`~train.data.augment.augment` with a mosaic of the item and three random
    others with probability ``config.mosaic``. ``train=False``: the serving letterbox only.
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        size: int,
        *,
        train: bool,
        config: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        if len(dataset) == 0:
            raise DatasetError(f"{dataset}: no images")
        self.dataset = dataset
        self.size = size
        self.train = train
        self.config = config or AugmentConfig()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator that augments ``index`` in ``epoch`` (default: ``self.epoch``)."""
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        """``key`` is an index, or ``(epoch, index)`` as :class:`EpochSampler` yields."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        sample = self.dataset[index]
        if not self.train:
            example, lb = val_transform(_example(sample), self.size)
            return Item(
                example.image, example.boxes, example.classes, sample.image_id, sample.path,
                letterbox=lb, original_boxes=sample.boxes, original_classes=sample.classes,
                original_crowd=sample.crowd,
            )  # fmt: skip
        rng = self.rng(index, epoch)
        examples = [_example(sample)]
        if rng.random() < self.config.mosaic:
            others = rng.integers(len(self.dataset), size=3)
            examples += [_example(self.dataset[int(i)]) for i in others]
        out = augment(examples, rng, self.size, self.config)
        return Item(out.image, out.boxes, out.classes, sample.image_id, sample.path)


def targets_from_boxes(
    boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray], height: int, width: int
) -> npt.NDArray[np.float32]:
    """(M, 6) float32 ``[image_index, class, cx, cy, w, h]`` from per-image xyxy pixel boxes,
    normalised by ``width`` (x, w) and ``height`` (y, h)."""
    rows = [np.zeros((0, 6), np.float32)]
    for index, (xyxy, cls) in enumerate(zip(boxes, classes, strict=True)):
        xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
        part = np.empty((len(xyxy), 6), np.float64)
        part[:, 0] = index
        part[:, 1] = cls
        part[:, 2] = (xyxy[:, 0] + xyxy[:, 2]) / 2 / width
        part[:, 3] = (xyxy[:, 1] + xyxy[:, 3]) / 2 / height
        part[:, 4] = (xyxy[:, 2] - xyxy[:, 0]) / width
        part[:, 5] = (xyxy[:, 3] - xyxy[:, 1]) / height
        rows.append(part.astype(np.float32))
    return np.concatenate(rows)


def collate(items: Sequence[Item]) -> Batch:
    """Pack same-size items into a :class:`Batch` (use as ``DataLoader(collate_fn=collate)``)."""
    images = to_input_tensor([item.image for item in items])
    height, width = images.shape[2:]
    targets = targets_from_boxes([i.boxes for i in items], [i.classes for i in items], height, width)
    val = all(item.letterbox is not None for item in items)
    return Batch(
        images=torch.from_numpy(images),
        targets=torch.from_numpy(targets),
        image_ids=[item.image_id for item in items],
        paths=[item.path for item in items],
        letterboxes=[item.letterbox for item in items if item.letterbox is not None] if val else [],
        original_boxes=[i.original_boxes for i in items if i.original_boxes is not None] if val else [],
        original_classes=[i.original_classes for i in items if i.original_classes is not None] if val else [],
        original_crowd=[i.original_crowd for i in items] if val else [],
    )


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffles ``0 .. n-1`` with a generator seeded by ``(seed, epoch)`` and yields ``(epoch, index)``;
    each full pass advances the epoch (``set_epoch`` sets it, e.g. when resuming)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        yield from ((epoch, int(i)) for i in order)
        self.epoch = epoch + 1


# No worker_init_fn calling cv2.setNumThreads: in a worker forked after the parent used OpenCV's
# thread pool, that call deadlocks.
def make_loaders(
    data: str | Path,
    size: int,
    batch_size: int,
    workers: int,
    seed: int,
    *,
    mosaic: float = 1.0,
    config: AugmentConfig | None = None,
) -> tuple[DataLoader, DataLoader, list[str]]:
    """Training and validation loaders over ``load_dataset(data, "train" / "val")`` and the class
    names. Training: augmented, shuffled by :class:`EpochSampler`; validation: letterbox, in order."""
    train_set, val_set = load_dataset(data, "train"), load_dataset(data, "val")
    if train_set.names != val_set.names:
        raise DatasetError(f"{data}: train classes {train_set.names} differ from val {val_set.names}")
    if [r.path for r in train_set.records] == [r.path for r in val_set.records]:
        log.warning(
            "%s: the val split is the training images (one YOLO folder or COCO json): mAP and best.pt "
            "measure training fit; give a dataset.json with separate train and val entries",
            data,
        )
    train_data = DetectionData(
        train_set, size, train=True, config=replace(config or AugmentConfig(), mosaic=mosaic), seed=seed
    )
    train_loader = DataLoader(
        train_data,
        batch_size=batch_size,
        sampler=EpochSampler(len(train_data), seed),
        num_workers=workers,
        collate_fn=collate,
    )
    val_loader = DataLoader(
        DetectionData(val_set, size, train=False),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
    )
    return train_loader, val_loader, list(train_set.names)
