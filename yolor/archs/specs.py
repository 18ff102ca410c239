"""The official YOLOR architectures as data.

Facts read from the official code (github.com/WongKinYiu/yolor): branch `main` (Darknet cfg files
`cfg/yolor_*.cfg`) and branch `paper` (`models/yolor-*.yaml`). Nothing here is copied code: each
`ArchSpec` lists the widths, depths and anchors that define one network; `yolor.archs.main_branch`
and `yolor.archs.paper_branch` turn a spec into modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from yolor.layers import make_divisible

Anchors = tuple[tuple[tuple[float, float], ...], ...]

P6_ANCHORS: Anchors = (
    ((19, 27), (44, 40), (38, 94)),
    ((96, 68), (86, 152), (180, 137)),
    ((140, 301), (303, 264), (238, 542)),
    ((436, 615), (739, 380), (925, 792)),
)
CSP_ANCHORS: Anchors = (
    ((12, 16), (19, 36), (40, 28)),
    ((36, 75), (76, 55), (72, 146)),
    ((142, 110), (192, 243), (459, 401)),
)

# BatchNorm eps differs between branches: 1e-4 in main's create_modules, 1e-3 in paper's initialize_weights.
BN_EPS = {"main": 1e-4, "paper": 1e-3}


@dataclass(frozen=True)
class ArchSpec:
    """One official YOLOR detector, before depth/width multipliers.

    Widths are output channels. `stem_widths` are the convs before the first CSP stage; `neck_widths`
    hold one width per output level, finest first (the last is the SPP-CSP width); each level's head
    stem has twice that width (scaled on its own, as the official yaml lists it).
    """

    name: str
    branch: Literal["main", "paper"]
    # reorg: ReOrg + 3x3 conv; conv: 3x3 conv, 3x3/2 conv, residual block; s2d / dwt: three ReOrg /
    # three Haar wavelet steps and no conv (3 -> 192 channels at stride 8)
    stem: Literal["reorg", "conv", "s2d", "dwt"]
    stem_widths: tuple[int, ...]
    stage_widths: tuple[int, ...]
    stage_depths: tuple[int, ...]
    neck_widths: tuple[int, ...]
    neck_depth: int
    anchors: Anchors
    strides: tuple[int, ...]
    input_size: int
    down: Literal["conv", "downc"] = "conv"  # paper E6/D6 downsample with DownC blocks
    csp_transition: bool = False  # main CSP nets: a 1x1 conv closes each backbone CSP branch
    spp_post_pairs: int = 1  # (1x1, 3x3) conv pairs after the SPP pooling concat
    width_multiple: float = 1.0  # the official yaml's own multipliers (E6/D6: width 1.25)
    depth_multiple: float = 1.0
    csp: Literal["cspf", "csp"] = "cspf"  # paper backbone block: BottleneckCSPF, or BottleneckCSP (SSSS)

    @property
    def bn_eps(self) -> float:
        return BN_EPS[self.branch]

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors[0])

    @property
    def stem_stride(self) -> int:
        return 8 if self.stem in ("s2d", "dwt") else 2

    @property
    def stage_downsamples(self) -> tuple[bool, ...]:
        """Which backbone stages open with a stride-2 conv: the last ones, as many as it takes from
        the stem's stride to the coarsest level's (the SSSS stems already reach stride 8)."""
        n_down = (self.strides[-1] // self.stem_stride).bit_length() - 1
        n = len(self.stage_widths)
        return tuple(i >= n - n_down for i in range(n))


@dataclass(frozen=True)
class Scaling:
    """Depth/width multipliers on top of an arch (1.0, 1.0 is the official net)."""

    depth: float = 1.0
    width: float = 1.0

    def channels(self, spec: ArchSpec, c: int) -> int:
        """Official parse_model rule: ceil to a multiple of 8 after scaling."""
        return make_divisible(round(c * spec.width_multiple * self.width, 6), 8)

    def repeats(self, spec: ArchSpec, n: int) -> int:
        """Official parse_model rule: round(n * depth), at least 1, single blocks stay single."""
        return max(round(n * spec.depth_multiple * self.depth), 1) if n > 1 else n


# fmt: off
ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="yolor_p6", branch="main", stem="reorg", stem_widths=(64,),
            stage_widths=(128, 256, 384, 512, 640), stage_depths=(3, 7, 7, 3, 3),
            neck_widths=(128, 192, 256, 320), neck_depth=3,
            anchors=P6_ANCHORS, strides=(8, 16, 32, 64), input_size=1280,
        ),
        ArchSpec(
            name="yolor_w6", branch="main", stem="reorg", stem_widths=(64,),
            stage_widths=(128, 256, 512, 768, 1024), stage_depths=(3, 7, 7, 3, 3),
            neck_widths=(128, 256, 384, 512), neck_depth=3,
            anchors=P6_ANCHORS, strides=(8, 16, 32, 64), input_size=1280,
        ),
        ArchSpec(
            name="yolor_csp", branch="main", stem="conv", stem_widths=(32, 64),
            stage_widths=(128, 256, 512, 1024), stage_depths=(2, 8, 8, 4),
            neck_widths=(128, 256, 512), neck_depth=2, csp_transition=True,
            anchors=CSP_ANCHORS, strides=(8, 16, 32), input_size=512,
        ),
        ArchSpec(
            name="yolor_csp_x", branch="main", stem="conv", stem_widths=(32, 80),
            stage_widths=(160, 320, 640, 1280), stage_depths=(3, 10, 10, 5),
            neck_widths=(160, 320, 640), neck_depth=3, csp_transition=True, spp_post_pairs=2,
            anchors=CSP_ANCHORS, strides=(8, 16, 32), input_size=512,
        ),
        ArchSpec(
            name="yolor-p6", branch="paper", stem="reorg", stem_widths=(64,),
            stage_widths=(128, 256, 384, 512, 640), stage_depths=(3, 7, 7, 3, 3),
            neck_widths=(128, 192, 256, 320), neck_depth=3,
            anchors=P6_ANCHORS, strides=(8, 16, 32, 64), input_size=1280,
        ),
        ArchSpec(
            name="yolor-w6", branch="paper", stem="reorg", stem_widths=(64,),
            stage_widths=(128, 256, 512, 768, 1024), stage_depths=(3, 7, 7, 3, 3),
            neck_widths=(128, 256, 384, 512), neck_depth=3,
            anchors=P6_ANCHORS, strides=(8, 16, 32, 64), input_size=1280,
        ),
        ArchSpec(
            name="yolor-e6", branch="paper", stem="reorg", stem_widths=(64,), down="downc",
            stage_widths=(128, 256, 512, 768, 1024), stage_depths=(3, 7, 7, 3, 3),
            neck_widths=(128, 256, 384, 512), neck_depth=3, width_multiple=1.25,
            anchors=P6_ANCHORS, strides=(8, 16, 32, 64), input_size=1280,
        ),
        ArchSpec(
            name="yolor-d6", branch="paper", stem="reorg", stem_widths=(64,), down="downc",
            stage_widths=(128, 256, 512, 768, 1024), stage_depths=(3, 15, 15, 7, 7),
            neck_widths=(128, 256, 384, 512), neck_depth=3, width_multiple=1.25,
            anchors=P6_ANCHORS, strides=(8, 16, 32, 64), input_size=1280,
        ),
        *(
            ArchSpec(
                name=f"yolor-ssss-{stem}", branch="paper", stem=stem, stem_widths=(), csp="csp",
                stage_widths=(256, 512, 1024), stage_depths=(8, 8, 4),
                neck_widths=(128, 256, 512), neck_depth=2, width_multiple=0.5, depth_multiple=0.33,
                anchors=CSP_ANCHORS, strides=(8, 16, 32), input_size=640,
            )
            for stem in ("dwt", "s2d")
        ),
    )
}
# fmt: on


class UnknownArch(ValueError):
    """No registered arch has this name."""


def get_spec(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        known = ", ".join(sorted(ARCHS))
        raise UnknownArch(f"unknown YOLOR arch {name!r}; known: {known}") from None
