"""A model repository for tests: models told apart by their answers. Fake backends whose one box
scores 0.5 + input_size / 1000, so every answer says which model and version ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from service.backends import FakeBackend
from service.http.app import create_app
from service.manifest import ModelManifest
from service.settings import Settings
from tests.support.model_files import TOP_K, write_model_dir

SIZES = {("big", 1): 128, ("small", 1): 64, ("small", 2): 96}  # (name, version) -> input size


def score(input_size: int) -> float:
    return 0.5 + input_size / 1000


def repository(root: Path, *, all_versions: bool = False) -> Path:
    """`big` (a bare folder: version 1) and `small` versions 1 and 2 (its policy: the latest, or all)."""
    write_model_dir(root / "big", input_size=SIZES["big", 1])
    for version in (1, 2):
        write_model_dir(root / "small" / str(version), input_size=SIZES["small", version])
    if all_versions:
        (root / "small" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    return root


def scored_by_size(s: Settings, manifest: ModelManifest) -> FakeBackend:
    def fn(batch: np.ndarray) -> np.ndarray:
        out = np.zeros((len(batch), TOP_K, 6), np.float32)
        out[:, 0] = [8, 8, 40, 40, score(manifest.input_size), 0]
        return out

    return FakeBackend.for_manifest(manifest, fn)


def repository_app(root: Path, **settings: Any) -> FastAPI:
    return create_app(Settings(model_repository=root, **settings), backend_factory=scored_by_size)
