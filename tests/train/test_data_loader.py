"""Loader: per-index seeding, collate's target layout (what the YOLOR loss reads), val records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from service.processing import scale_boxes
from train.data.augment import AugmentConfig
from train.data.datasets import load_dataset
from train.data.loader import DetectionData, EpochSampler, Item, collate, make_loaders
from train.data.synth import SynthOptions, write_dataset

pytestmark = pytest.mark.model  # needs torch


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, train=6, val=3, seed=1, options=SynthOptions(size=96, min_size=10, max_objects=4))
    return root


def test_collate_targets_are_image_class_and_normalised_cxcywh() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[0, 0] = 255
    items = [
        Item(image, np.asarray([[8, 16, 24, 48]], np.float32), np.asarray([2]), 7, Path("a.png")),
        Item(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 8, Path("b.png")),
        Item(
            image,
            np.asarray([[0, 0, 64, 32], [32, 32, 48, 64]], np.float32),
            np.asarray([0, 1]),
            9,
            Path("c"),
        ),
    ]
    batch = collate(items)
    assert batch.images.shape == (3, 3, 64, 64) and batch.images.dtype == torch.float32
    assert float(batch.images.max()) == 1.0 and float(batch.images[0, :, 0, 0].min()) == 1.0
    expected = [[0, 2, 0.25, 0.5, 0.25, 0.5], [2, 0, 0.5, 0.25, 1.0, 0.5], [2, 1, 0.625, 0.75, 0.25, 0.5]]
    assert batch.targets.dtype == torch.float32
    torch.testing.assert_close(batch.targets, torch.tensor(expected))
    assert batch.image_ids == [7, 8, 9] and batch.letterboxes == [] and len(batch) == 3


def test_val_items_carry_letterbox_and_original_labels(synth_dir: Path) -> None:
    dataset = load_dataset(synth_dir, "val")
    data = DetectionData(dataset, 128, train=False)
    batch = collate([data[i] for i in range(len(data))])
    assert batch.images.shape == (3, 3, 128, 128)
    for i, lb in enumerate(batch.letterboxes):
        sample = dataset[i]
        assert lb.source_hw == sample.image.shape[:2] and lb.target_hw == (128, 128)
        np.testing.assert_array_equal(batch.original_boxes[i], sample.boxes)
        np.testing.assert_array_equal(batch.original_classes[i], sample.classes)
        rows = batch.targets[batch.targets[:, 0] == i].numpy()
        cx, cy, w, h = (rows[:, k] * 128 for k in range(2, 6))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        np.testing.assert_allclose(scale_boxes(boxes, lb), sample.boxes, atol=1e-2)


def test_training_items_depend_only_on_seed_epoch_and_index(synth_dir: Path) -> None:
    dataset = load_dataset(synth_dir, "train")
    data = DetectionData(dataset, 96, train=True, config=AugmentConfig(mosaic=0.5), seed=3)
    forward = [data[(0, i)] for i in range(len(data))]
    backward = [data[(0, i)] for i in reversed(range(len(data)))][::-1]
    for a, b in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.image.shape == (96, 96, 3)
    data.set_epoch(0)
    np.testing.assert_array_equal(data[2].image, forward[2].image)  # a plain index uses data.epoch
    assert not np.array_equal(data[(1, 2)].image, forward[2].image)
    other_seed = DetectionData(dataset, 96, train=True, config=AugmentConfig(mosaic=0.5), seed=4)
    assert not np.array_equal(other_seed[(0, 2)].image, forward[2].image)


def test_epoch_sampler_reshuffles_each_pass() -> None:
    sampler = EpochSampler(10, seed=0)
    first, second = list(sampler), list(sampler)
    assert {e for e, _ in first} == {0} and {e for e, _ in second} == {1}
    assert sorted(i for _, i in first) == list(range(10)) and first != [(0, i) for i in range(10)]
    assert [i for _, i in first] != [i for _, i in second]
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_one_folder_for_both_splits_is_warned_about(
    synth_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    make_loaders(synth_dir / "dataset.json", 64, 2, 0, 0)
    assert "val split is the training images" not in caplog.text
    folder = tmp_path / "yolo"  # a bare YOLO folder: train and val are the same images
    shutil.copytree(synth_dir / "train", folder)
    (folder / "classes.txt").write_text(
        "\n".join(json.loads((synth_dir / "dataset.json").read_text())["names"])
    )
    make_loaders(folder, 64, 2, 0, 0)
    assert "val split is the training images" in caplog.text


def test_make_loaders_from_a_dataset_json(synth_dir: Path) -> None:
    train_loader, val_loader, names = make_loaders(synth_dir / "dataset.json", 64, 4, 0, seed=0, mosaic=1.0)
    assert names == json.loads((synth_dir / "dataset.json").read_text())["names"]
    batches = list(train_loader)
    assert [len(b) for b in batches] == [4, 2]
    targets = torch.cat([b.targets for b in batches])
    assert targets.shape[1] == 6 and bool(((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all())
    val = next(iter(val_loader))
    assert len(val.letterboxes) == len(val) == 3


def test_worker_processes_give_the_same_batches(synth_dir: Path) -> None:
    data = DetectionData(load_dataset(synth_dir, "train"), 64, train=True, seed=2)
    data[(0, 0)]  # OpenCV used in this process before the workers fork
    batches = []
    for workers in (0, 2):
        loader = DataLoader(
            data, batch_size=4, sampler=EpochSampler(len(data), 2), num_workers=workers, collate_fn=collate,
            timeout=60 if workers else 0,
        )  # fmt: skip
        batches.append([(b.images, b.targets) for b in loader])
    for (images_a, targets_a), (images_b, targets_b) in zip(*batches, strict=True):
        assert torch.equal(images_a, images_b) and torch.equal(targets_a, targets_b)


def test_coco_crowd_regions_reach_evaluation_but_not_training(tmp_path: Path) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 80, 3), 90, np.uint8))
    (tmp_path / "ann.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 40}],
                "categories": [{"id": 5, "name": "thing"}],
                "annotations": [
                    {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 10]},
                    {"id": 2, "image_id": 1, "category_id": 5, "bbox": [40, 0, 40, 40], "iscrowd": 1},
                ],
            }
        )
    )
    dataset = load_dataset(tmp_path / "ann.json")
    val = collate([DetectionData(dataset, 64, train=False)[0]])
    ((crowd_boxes, crowd_classes),) = val.original_crowd
    np.testing.assert_allclose(crowd_boxes, [[40, 0, 80, 40]])
    assert crowd_classes.tolist() == [0]
    np.testing.assert_allclose(val.original_boxes[0], [[10, 5, 30, 15]])  # objects only
    config = AugmentConfig(mosaic=0.0, scale=0.0, translate=0.0, flip_lr=0.0)
    train_item = DetectionData(dataset, 64, train=True, config=config)[0]
    assert len(train_item.boxes) == 1  # the crowd region is no training target
