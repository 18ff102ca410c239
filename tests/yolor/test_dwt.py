"""`HaarDWT`, the yolor-ssss-dwt stem: a brute-force Haar transform and pytorch_wavelets' own output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from yolor.layers import HaarDWT, ReOrg

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).parents[1] / "fixtures" / "dwt_reference.npz"


def brute_force_haar(x: np.ndarray) -> np.ndarray:
    """Pixel by pixel: for each 2x2 block (a b / c d) of each channel, the orthonormal Haar
    coefficients (sum, row difference, column difference, diagonal) / 2, halved as the official DWT
    halves them, details shifted by 0.5; channels laid out [C means, then 3 details per channel]."""
    bsz, channels, height, width = x.shape
    out = np.zeros((bsz, 4 * channels, height // 2, width // 2), np.float64)
    for n in range(bsz):
        for ch in range(channels):
            for i in range(height // 2):
                for j in range(width // 2):
                    a, b = x[n, ch, 2 * i, 2 * j], x[n, ch, 2 * i, 2 * j + 1]
                    c, d = x[n, ch, 2 * i + 1, 2 * j], x[n, ch, 2 * i + 1, 2 * j + 1]
                    coefficients = [
                        (a + b + c + d) / 2,
                        (a + b - c - d) / 2,
                        (a - b + c - d) / 2,
                        (a - b - c + d) / 2,
                    ]
                    out[n, ch, i, j] = coefficients[0] / 2
                    for k in range(3):
                        out[n, channels + 3 * ch + k, i, j] = coefficients[k + 1] / 2 + 0.5
    return out


def test_haar_dwt_equals_a_brute_force_transform():
    x = np.random.default_rng(1).normal(size=(2, 3, 6, 10)).astype(np.float32)
    got = HaarDWT()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, brute_force_haar(x.astype(np.float64)), atol=1e-6)


def test_haar_dwt_equals_pytorch_wavelets_as_the_official_dwt_uses_it():
    """Reference written by tools/make_dwt_fixture.py from pytorch_wavelets' DWTForward."""
    data = np.load(FIXTURE)
    got = HaarDWT()(torch.from_numpy(data["input"])).numpy()
    np.testing.assert_allclose(got, data["output"], atol=1e-6)
    reorg = ReOrg()(torch.from_numpy(data["input"])).numpy()
    assert np.abs(reorg - data["output"]).max() > 0.1  # the official fallback is a different map
