"""Access to the committed official-code reference fixtures (see tools/make_parity_fixtures.py)."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.parity import REFERENCE_INPUT, WIDE_INPUT, parity_input, parity_state_dict

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "parity"
ARCHS = [
    *("yolor_p6", "yolor_w6", "yolor_csp", "yolor_csp_x"),
    *("yolor-p6", "yolor-w6", "yolor-e6", "yolor-d6", "yolor-ssss-dwt", "yolor-ssss-s2d"),
]


def fixture_meta(arch: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{arch}.json").read_text())


def fixture_arrays(arch: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{arch}.npz") as data:
        return {k: data[k] for k in data.files}


def reference_input() -> torch.Tensor:
    return torch.from_numpy(parity_input(REFERENCE_INPUT))


def wide_input() -> torch.Tensor:
    return torch.from_numpy(parity_input(WIDE_INPUT))


def official_state_dict(arch: str) -> OrderedDict[str, torch.Tensor]:
    """The exact weights the official code ran with, under the official key names and order."""
    meta = fixture_meta(arch)
    fixed = {k: np.asarray(v, dtype=np.float32) for k, v in meta["fixed"].items()}
    values = parity_state_dict(meta["keys"], fixed, meta["calibration"])
    return OrderedDict((k, torch.from_numpy(v)) for k, v in values.items())


def save_official_checkpoint(arch: str, path: Path) -> Path:
    """Write an official-layout checkpoint: main {'model': state dict}, paper state dict likewise."""
    torch.save({"epoch": -1, "model": official_state_dict(arch), "optimizer": None}, path)
    return path


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())
