"""Architecture facts: parameter counts, output layout, decoding, input-size rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import yolor
from yolor.archs.specs import ARCHS, Scaling
from yolor.heads import decode
from yolor.model import YOLOR

pytestmark = pytest.mark.model

# Parameter counts of the official builds (official code, both branches).
OFFICIAL_PARAMS = {
    "yolor_p6": 37_265_016,
    "yolor_w6": 79_873_400,
    "yolor_csp": 52_923_994,
    "yolor_csp_x": 99_754_058,
    "yolor-p6": 37_270_264,
    "yolor-w6": 79_880_952,
    "yolor-e6": 115_909_400,
    "yolor-d6": 151_782_680,
    "yolor-ssss-dwt": 9_216_634,
    "yolor-ssss-s2d": 9_216_634,
}


def test_every_arch_is_registered():
    assert set(ARCHS) == set(OFFICIAL_PARAMS)


@pytest.mark.parametrize("arch", sorted(OFFICIAL_PARAMS))
def test_parameter_count_equals_official(arch):
    with torch.device("meta"):
        model = yolor.build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[arch]


@pytest.mark.parametrize("arch", sorted(OFFICIAL_PARAMS))
def test_small_variant_output_layout(arch):
    nc = 7
    model = yolor.build_model(arch, nc=nc, depth=0.33, width=0.125)
    h, w = 2 * model.max_stride, 3 * model.max_stride  # non-square
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        y = model(x)
    cells = sum((h // s) * (w // s) for s in model.strides)
    assert y.shape == (2, model.spec.num_anchors * cells, 5 + nc)
    assert torch.isfinite(y).all()
    assert ((y[..., 4:] >= 0) & (y[..., 4:] <= 1)).all()
    model.train()
    raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, h // s, w // s, 5 + nc) for s in model.strides]


def test_rejects_input_not_multiple_of_max_stride():
    model = yolor.build_model("yolor_csp", nc=2, depth=0.33, width=0.125)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 48, 64))


def test_scaling_follows_official_rounding():
    spec = ARCHS["yolor-e6"]  # the yaml's own width_multiple is 1.25
    assert Scaling().channels(spec, 64) == 80
    assert Scaling(width=0.0625 / 1.25).channels(spec, 384) == 24
    assert Scaling(depth=0.33).repeats(spec, 7) == 2
    assert Scaling(depth=0.33).repeats(spec, 1) == 1
    assert Scaling(depth=0.1).repeats(spec, 3) == 1
    ssss = ARCHS["yolor-ssss-s2d"]  # the yaml's own multipliers: depth 0.33, width 0.5
    assert [Scaling().repeats(ssss, n) for n in (8, 4, 2)] == [3, 1, 1]
    assert Scaling().channels(ssss, 1024) == 512
    assert ssss.stage_downsamples == (False, True, True)  # the three s2d steps reach stride 8
    assert ARCHS["yolor-p6"].stage_downsamples == (True,) * 5


def _naive_decode(raw: np.ndarray, anchors: np.ndarray, stride: int) -> np.ndarray:
    """Element-by-element decode, written from the formula, for one level."""
    b, na, ny, nx, no = raw.shape
    sig = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
    out = np.zeros((b, na * ny * nx, no))
    for bi in range(b):
        row = 0
        for a in range(na):
            for gy in range(ny):
                for gx in range(nx):
                    s = sig[bi, a, gy, gx]
                    out[bi, row, 0] = (s[0] * 2 - 0.5 + gx) * stride
                    out[bi, row, 1] = (s[1] * 2 - 0.5 + gy) * stride
                    out[bi, row, 2] = (s[2] * 2) ** 2 * anchors[a, 0]
                    out[bi, row, 3] = (s[3] * 2) ** 2 * anchors[a, 1]
                    out[bi, row, 4:] = s[4:]
                    row += 1
    return out


def test_decode_matches_naive_formula_and_row_order():
    gen = torch.Generator().manual_seed(0)
    strides = (8, 16)
    raw = [torch.randn(2, 3, 4, 5, 7, generator=gen) * 3, torch.randn(2, 3, 2, 3, 7, generator=gen) * 3]
    anchors = torch.tensor(
        [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]]], dtype=torch.float32
    )
    got = decode(raw, anchors, strides).numpy()
    want = np.concatenate(
        [_naive_decode(r.numpy(), anchors[i].numpy(), strides[i]) for i, r in enumerate(raw)], axis=1
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_custom_anchors_and_class_names_are_kept():
    spec = ARCHS["yolor_csp"]
    anchors = torch.arange(18, dtype=torch.float32).view(3, 3, 2) + 1
    model = YOLOR(spec, 2, Scaling(0.33, 0.125), ["cat", "dog"], anchors)
    assert torch.equal(model.anchors, anchors)
    assert model.class_names == ["cat", "dog"]
    with pytest.raises(ValueError, match="class names"):
        YOLOR(spec, 3, Scaling(0.33, 0.125), ["cat", "dog"])


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown YOLOR arch 'yolor-x9'.*known: yolor-d6"):
        yolor.build_model("yolor-x9")
