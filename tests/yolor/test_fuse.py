"""fuse_model: BatchNorm and implicit knowledge folded, outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import yolor
from tests.support.nets import randomize
from yolor.archs.specs import ARCHS
from yolor.fuse import fold_implicit
from yolor.layers import HaarDWT, ImplicitA, ImplicitM, ReOrg

pytestmark = pytest.mark.model


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fused_equals_unfused(arch):
    model = randomize(yolor.build_model(arch, nc=5, depth=0.33, width=0.25))
    fused = yolor.fuse_model(model)
    s = model.max_stride
    x = torch.rand(2, 3, 2 * s, s)
    with torch.no_grad():
        want, got = model(x), fused(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    kinds = {type(m) for m in fused.modules()}
    assert not kinds & {nn.BatchNorm2d, nn.SyncBatchNorm, ImplicitA, ImplicitM}
    # The input model is untouched.
    assert any(isinstance(m, ImplicitA) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), want)


@pytest.mark.parametrize("arch", ["yolor-ssss-dwt", "yolor-ssss-s2d"])
def test_space_to_depth_stem_folds_into_the_first_convs(arch):
    """The three ReOrg / Haar steps leave the fused net: the first CSP's two 1x1 convs become 8x8
    stride-8 convs on the image, and every input pixel still matters (a wrong fold breaks the
    equality above; this checks it happened)."""
    model = randomize(yolor.build_model(arch, nc=2, width=0.25))
    fused = yolor.fuse_model(model)
    assert not {type(m) for m in fused.modules()} & {ReOrg, HaarDWT}
    csp = fused.net.stages[0][0]
    for conv in (csp.part_b.conv, csp.part_a):
        assert (conv.in_channels, conv.kernel_size, conv.stride) == (3, (8, 8), (8, 8))
        assert (conv.weight.abs().sum(0) > 0).all()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        want, got = model(x), fused(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_fold_implicit_formula():
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(6, 4, 1)
    ia, im = ImplicitA(6), ImplicitM(4)
    with torch.no_grad():
        ia.implicit.copy_(torch.randn(1, 6, 1, 1, generator=gen))
        im.implicit.copy_(torch.randn(1, 4, 1, 1, generator=gen))
    x = torch.randn(3, 6, 5, 5, generator=gen)
    with torch.no_grad():
        want = im(conv(ia(x)))
        w, b, a, m = conv.weight[:, :, 0, 0], conv.bias, ia.implicit.flatten(), im.implicit.flatten()
        w_expected, b_expected = m[:, None] * w, m * (b + w @ a)
        fold_implicit(conv, ia, im)
        got = conv(x)
    torch.testing.assert_close(conv.weight[:, :, 0, 0], w_expected)
    torch.testing.assert_close(conv.bias, b_expected)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fold_implicit_rejects_spatial_conv():
    with pytest.raises(ValueError, match="1x1"):
        fold_implicit(nn.Conv2d(2, 2, 3), ImplicitA(2), ImplicitM(2))
