"""Reference outputs of pytorch_wavelets' one-level Haar transform, combined as the official
paper-branch `DWT` module combines them: `tests/fixtures/dwt_reference.npz` for `yolor.layers.HaarDWT`.

    pip install --target /tmp/pwlib --no-deps pytorch_wavelets PyWavelets 'setuptools<81'
    PYTHONPATH=/tmp/pwlib python tools/make_dwt_fixture.py --out tests/fixtures/dwt_reference.npz

pytorch_wavelets is not a dependency of this project; it only generates this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from pytorch_wavelets import DWTForward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 8, 12), dtype=np.float32))
    low, (high,) = DWTForward(J=1, wave="db1", mode="zero")(x)  # high: (B, C, 3, H/2, W/2)
    b, _, h, w = x.shape
    out = torch.cat([low / 2.0, high.reshape(b, -1, h // 2, w // 2) / 2.0 + 0.5], 1)
    np.savez_compressed(args.out, input=x.numpy(), output=out.numpy())


if __name__ == "__main__":
    main()
