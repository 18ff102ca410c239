"""Deploy-time folding: BatchNorm into convs, implicit knowledge into the head's 1x1 convs."""

from __future__ import annotations

import copy

import torch
from torch import nn

from yolor.archs.paper_branch import CSP, PaperBranchNet, _ConcatBN
from yolor.heads import _ImplicitHeadBase
from yolor.layers import ChannelAffine, ConvBNAct, ImplicitA, ImplicitM
from yolor.model import YOLOR


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x * scale + shift for an eval-mode BatchNorm, in float64."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _apply_affine_to_conv(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make `conv` compute conv(x) * scale + shift per output channel (adds a bias if needed)."""
    w = conv.weight.double() * scale.view(-1, 1, 1, 1)
    b = (conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)) * scale + shift
    conv.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=False)


def fold_implicit(conv: nn.Conv2d, ia: ImplicitA, im: ImplicitM) -> None:
    """Fold im * conv(x + ia) into a 1x1 conv: W' = diag(m) W,  b' = m * (b + W a)."""
    if conv.kernel_size != (1, 1):
        raise ValueError("implicit folding needs a 1x1 conv")
    a = ia.implicit.double().flatten()
    m = im.implicit.double().flatten()
    wa = conv.weight.double()[:, :, 0, 0] @ a
    _apply_affine_to_conv(conv, m, m * wa)  # b' = b * m + m * (W a)


def _fold_concat_bn(block: _ConcatBN) -> None:
    """Split the BatchNorm after cat[blocks_out, plain_conv_out]: the plain half folds into its conv,
    the other half into the plain conv `close` that ends the blocks branch where the block has one
    (BottleneckCSP), else (after a residual add or SiLU, no conv can absorb it) a ChannelAffine."""
    scale, shift = _bn_scale_shift(block.bn)  # type: ignore[arg-type]
    part_a = block.part_a
    assert isinstance(part_a, nn.Conv2d)
    n_blocks = scale.numel() - part_a.out_channels
    dtype = part_a.weight.dtype
    close = getattr(block, "close", None)
    if isinstance(close, nn.Conv2d):
        _apply_affine_to_conv(close, scale[:n_blocks], shift[:n_blocks])
    else:
        block.scale_blocks = ChannelAffine(scale[:n_blocks].to(dtype), shift[:n_blocks].to(dtype))
    _apply_affine_to_conv(part_a, scale[n_blocks:], shift[n_blocks:])
    block.bn = nn.Identity()


def _linear_map(stem: nn.Module, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv-free stem that maps each (3, block, block) input block to one output pixel, affinely,
    as (weight (C, 3, block, block), bias (C,)), read off its response to each basis image."""
    basis = torch.eye(3 * block * block, dtype=torch.float64).view(-1, 3, block, block)
    zero = torch.zeros(1, 3, block, block, dtype=torch.float64)
    bias = stem(zero)[0, :, 0, 0]
    weight = (stem(basis)[:, :, 0, 0] - bias).T  # (C, 3 * block * block)
    return weight.reshape(-1, 3, block, block), bias


def _fold_space_to_depth_stem(net: PaperBranchNet, stride: int) -> None:
    """YOLOR-S4: three ReOrg or Haar steps (a fixed affine map of each 8x8 input block) feed only the
    first CSP's two 1x1 convs, so all three fold into those as 8x8 stride-8 convs on the image: the
    slicing and arithmetic leave the graph (the Haar stem was half of the demo-size net's time)."""
    csp = net.stages[0][0]  # type: ignore[index]
    assert isinstance(csp, CSP)
    weight, bias = _linear_map(net.stem, stride)
    for owner, name in ((csp.part_b, "conv"), (csp, "part_a")):
        conv = getattr(owner, name)
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        w = conv.weight.double()[:, :, 0, 0]
        b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        folded = nn.Conv2d(3, conv.out_channels, stride, stride, 0, bias=True)
        folded.weight = nn.Parameter(torch.einsum("oc,cikl->oikl", w, weight).to(conv.weight.dtype))
        folded.bias = nn.Parameter((b + w @ bias).to(conv.weight.dtype))
        setattr(owner, name, folded)
    net.stem = nn.Sequential()


@torch.no_grad()
def fuse_model(model: YOLOR) -> YOLOR:
    """Return an eval-mode copy of `model` with every BatchNorm folded into the preceding conv (or a
    per-channel affine where no conv precedes), every ImplicitA/ImplicitM folded into the head's
    prediction convs, and a YOLOR-S4 space-to-depth stem folded into the convs after it. The
    input model is left untouched; outputs agree to float rounding."""
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            _apply_affine_to_conv(module.conv, *_bn_scale_shift(module.bn))
            module.bn = nn.Identity()
        elif isinstance(module, _ConcatBN) and isinstance(module.bn, nn.BatchNorm2d):
            _fold_concat_bn(module)
        elif isinstance(module, _ImplicitHeadBase):
            for conv, ia, im in zip(module.preds, module.ia, module.im, strict=True):
                fold_implicit(conv, ia, im)  # type: ignore[arg-type]
            module.ia = nn.ModuleList(nn.Identity() for _ in module.ia)
            module.im = nn.ModuleList(nn.Identity() for _ in module.im)
    if fused.spec.stem in ("s2d", "dwt"):
        _fold_space_to_depth_stem(fused.net, fused.spec.stem_stride)  # type: ignore[arg-type]
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused
