"""Deterministic, non-trivial weights keyed by checkpoint key name.

Parity fixtures are made by loading these weights into the *official* YOLOR code and recording its
outputs; the tests rebuild the same weights from the committed key list and load them through
`yolor.load_model`. The values depend only on the key string and shape (seeded by CRC32), so both
sides agree without shipping hundreds of MB of random weights.

Random weights alone make a deep net forget its input (the signal shrinks or explodes layer by layer),
so BatchNorm statistics are *calibrated*: `calibrate_batchnorm` runs one forward of the official model
and, just before each BatchNorm runs, rescales its running statistics by the mean and variance of its
actual input (two scalars per BatchNorm, stored in the fixture). The outputs then depend on the input,
BatchNorm statistics stay far from the identity and implicit vectors far from 0/1, so a mis-assigned
tensor, a wrong slice order or a wrong fold shows up.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

ANCHOR_SUFFIXES = ("anchors", "anchor_grid")

# (seed, shape) of the inputs; regenerated bit-exactly by `parity_input` instead of being stored.
REFERENCE_INPUT = (0, (1, 3, 64, 64))
WIDE_INPUT = (2, (1, 3, 64, 320))  # the top level gets several cells: SPP pooling order matters
CALIBRATION_INPUT = (1, (8, 3, 64, 64))  # a batch: BatchNorms on 1x1 maps still see variance
# Archs whose decoded output is stored too (the decode is shared, raw maps are stored for all).
DECODED_ARCHS = ("yolor_p6", "yolor_csp", "yolor-p6")


def parity_input(spec: tuple[int, tuple[int, ...]]) -> np.ndarray:
    """Deterministic float32 image batch in [0, 1) from (seed, shape): a coarse 4x4 colour layout plus
    fine noise, so images differ in their global statistics too (pure noise would look alike to the
    coarse levels). PCG64 and plain arithmetic make it bit-identical everywhere."""
    seed, shape = spec
    b, c, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.random((b, c, 4, 4)), np.ones((h // 4, w // 4)))
    return (0.6 * coarse + 0.4 * rng.random(shape)).astype(np.float32)


def parity_value(
    key: str, shape: Sequence[int], calibration: tuple[float, float] | None = None
) -> np.ndarray:
    """Return the deterministic tensor for one checkpoint entry (float32, or int64 for counters).

    `calibration` = (mean, var) of the BatchNorm's input, for running_mean / running_var entries.
    """
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    mu, var = calibration or (0.0, 1.0)
    if key.endswith("running_var"):
        out = rng.uniform(0.5, 2.0, shape) * var
    elif key.endswith("running_mean"):
        out = rng.normal(0.0, 0.2, shape) * np.sqrt(var) + mu
    elif key.endswith("implicit"):
        # The same rule for ImplicitA and ImplicitM: both get values well away from 0 and 1.
        out = rng.normal(1.0, 0.2, shape)
    elif len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        out = rng.normal(0.0, 1.0, shape) * np.sqrt(1.0 / fan_in)
    elif key.endswith("weight"):  # BatchNorm scale
        out = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("bias"):
        out = rng.normal(0.0, 0.1, shape)
    else:
        raise KeyError(f"no parity rule for {key!r}")
    return out.astype(np.float32)


def _bn_prefix(key: str) -> str:
    return key.rsplit(".", 1)[0]


def parity_state_dict(
    keys: Iterable[tuple[str, Sequence[int]]],
    fixed: Mapping[str, np.ndarray] | None = None,
    calibration: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, np.ndarray]:
    """Build a whole state dict; `fixed` supplies entries that must keep real values (anchors),
    `calibration` maps a BatchNorm's key prefix to the (mean, var) of its input."""
    fixed, calibration = fixed or {}, calibration or {}

    def value(k: str, shape: Sequence[int]) -> np.ndarray:
        if k in fixed:
            return np.asarray(fixed[k])
        cal = calibration.get(_bn_prefix(k))
        return parity_value(k, shape, (float(cal[0]), float(cal[1])) if cal is not None else None)

    return {k: value(k, shape) for k, shape in keys}


def calibrate_batchnorm(model: Any, x: Any) -> dict[str, tuple[float, float]]:
    """Calibrate a model holding parity weights; returns {bn_prefix: (mean, var)} of each BN input.

    One no-grad forward; a pre-hook on each BatchNorm2d measures its input (mean over everything,
    per-channel variance averaged over channels) and rewrites its running stats with `parity_value`,
    so layers downstream already see calibrated activations.
    """
    import torch

    stats: dict[str, tuple[float, float]] = {}

    def hook_for(name: str) -> Any:
        def pre_hook(bn: torch.nn.BatchNorm2d, args: tuple[torch.Tensor, ...]) -> None:
            t = args[0].double()
            mu, var = float(t.mean()), max(float(t.var(dim=(0, 2, 3), correction=0).mean()), 1e-6)
            stats[name] = (mu, var)
            for buf in ("running_mean", "running_var"):
                current = getattr(bn, buf)
                new = parity_value(f"{name}.{buf}", current.shape, (mu, var))
                current.copy_(torch.from_numpy(new))

        return pre_hook

    handles = [
        m.register_forward_pre_hook(hook_for(name))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return stats
