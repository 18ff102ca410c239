"""The `YOLOR` detector module and `build_model`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from yolor.archs.main_branch import MainBranchNet
from yolor.archs.paper_branch import PaperBranchNet
from yolor.archs.specs import ArchSpec, Scaling, get_spec
from yolor.classes import default_class_names
from yolor.heads import decode


class YOLOR(nn.Module):
    """A YOLOR detector.

    forward(x): x float32 (B, 3, H, W), RGB in [0, 1], H and W multiples of `max_stride`.
      - eval mode: (B, N, 5 + nc) decoded predictions (see `yolor.heads.decode`);
      - train mode: the raw per-level maps (B, na, ny, nx, 5 + nc), as the loss needs them.
    `anchors` is a (nl, na, 2) buffer in input pixels.
    """

    anchors: torch.Tensor

    def __init__(
        self,
        spec: ArchSpec,
        nc: int = 80,
        scaling: Scaling | None = None,
        class_names: Sequence[str] | None = None,
        anchors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if nc < 1:
            raise ValueError(f"nc must be >= 1, got {nc}")
        self.spec, self.nc = spec, nc
        self.input_size: int = spec.input_size  # square inference size; checkpoints may override
        self.scaling = scaling or Scaling()
        self.class_names = list(class_names) if class_names is not None else default_class_names(nc)
        if len(self.class_names) != nc:
            raise ValueError(f"{len(self.class_names)} class names for nc={nc}")
        net_cls = MainBranchNet if spec.branch == "main" else PaperBranchNet
        self.net = net_cls(spec, nc, self.scaling)
        if anchors is None:
            anchors = torch.tensor(spec.anchors, dtype=torch.float32)
        if tuple(anchors.shape) != (spec.num_levels, spec.num_anchors, 2):
            raise ValueError(f"anchors must be {(spec.num_levels, spec.num_anchors, 2)}, got {anchors.shape}")
        self.register_buffer("anchors", anchors.detach().float().clone())

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def strides(self) -> tuple[int, ...]:
        return self.spec.strides

    @property
    def max_stride(self) -> int:
        return max(self.spec.strides)

    def raw_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-level raw logits (B, na, ny, nx, 5 + nc), whatever the mode."""
        stride = self.max_stride
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % stride or x.shape[3] % stride:
            raise ValueError(f"expected (B, 3, H, W) with H, W multiples of {stride}, got {tuple(x.shape)}")
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        raw = self.raw_outputs(x)
        return raw if self.training else decode(raw, self.anchors, self.strides)


def build_model(
    arch: str,
    nc: int = 80,
    *,
    depth: float = 1.0,
    width: float = 1.0,
    class_names: Sequence[str] | None = None,
) -> YOLOR:
    """A freshly initialised YOLOR (official init: ImplicitA ~ N(0, .02), ImplicitM ~ N(1, .02)).

    depth/width multiply the arch's block repeats and channels with the official rounding rules.
    """
    model = YOLOR(get_spec(arch), nc, Scaling(depth, width), class_names)
    return model.eval()
