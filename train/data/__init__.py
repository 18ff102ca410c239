"""Datasets (YOLO, COCO, synthetic shapes), augmentation and the torch loader.

``datasets``, ``augment``, ``shapes`` and ``synth`` need only numpy, OpenCV (and scikit-image for
the synthetic backgrounds); ``loader`` needs torch and is imported on its own.
"""

from train.data.augment import AugmentConfig, Example, augment, val_transform
from train.data.datasets import DatasetError, DetectionDataset, Sample, load_dataset
from train.data.synth import CLASS_NAMES, SynthOptions, write_dataset

__all__ = [
    "CLASS_NAMES",
    "AugmentConfig",
    "DatasetError",
    "DetectionDataset",
    "Example",
    "Sample",
    "SynthOptions",
    "augment",
    "load_dataset",
    "val_transform",
    "write_dataset",
]
