"""YOLOR detectors in PyTorch: the official nets of both code branches, checkpoint loading, folding."""

from yolor.archs.specs import ARCHS, ArchSpec, Scaling
from yolor.checkpoint import CheckpointError, load_model, save_checkpoint
from yolor.fuse import fuse_model
from yolor.model import YOLOR, build_model

__all__ = [
    "ARCHS",
    "YOLOR",
    "ArchSpec",
    "CheckpointError",
    "Scaling",
    "build_model",
    "fuse_model",
    "load_model",
    "save_checkpoint",
]
