"""The official YOLOR checkpoints: where the two official READMEs link them, and what they are.

Facts read from the official repository (github.com/WongKinYiu/yolor, main 3ca250ae, paper
10efdf7d): every link is a file of the GitHub release tagged `weights`. `img_size` is the size the
README tests each net at; AP is its COCO val2017 AP@0.5:0.95 there. No checksums are published.
"""

from __future__ import annotations

from dataclasses import dataclass

RELEASE_URL = "https://github.com/WongKinYiu/yolor/releases/download/weights/"


@dataclass(frozen=True)
class OfficialWeights:
    name: str  # the release file stem; the file is f"{name}.pt"
    branch: str  # "main" or "paper": which official code (and README) it belongs to
    arch: str  # our registered arch it loads as
    img_size: int
    ap: float | None  # COCO val AP@0.5:0.95 in the official README, None where it gives none
    linked: bool = True  # False: not linked by its README (the release has it, the README does not)

    @property
    def file(self) -> str:
        return f"{self.name}.pt"

    def url(self, base_url: str = RELEASE_URL) -> str:
        return base_url.rstrip("/") + "/" + self.file


OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    w.name: w
    for w in (
        OfficialWeights("yolor_p6", "main", "yolor_p6", 1280, 52.5),
        # The main README lists W6 only in its test-dev table; its get_pretrain.sh fetched it.
        OfficialWeights("yolor_w6", "main", "yolor_w6", 1280, None, linked=False),
        OfficialWeights("yolor_csp", "main", "yolor_csp", 640, 49.2),
        OfficialWeights("yolor_csp_star", "main", "yolor_csp", 640, 50.0),
        OfficialWeights("yolor_csp_x", "main", "yolor_csp_x", 640, 51.1),
        OfficialWeights("yolor_csp_x_star", "main", "yolor_csp_x", 640, 51.5),
        OfficialWeights("yolor-p6", "paper", "yolor-p6", 1280, 52.5),
        OfficialWeights("yolor-w6", "paper", "yolor-w6", 1280, 54.0),
        OfficialWeights("yolor-e6", "paper", "yolor-e6", 1280, 54.6),
        OfficialWeights("yolor-d6", "paper", "yolor-d6", 1280, 55.4),
        OfficialWeights("yolor-ssss-dwt", "paper", "yolor-ssss-dwt", 640, 37.0),
        OfficialWeights("yolor-ssss-s2d", "paper", "yolor-ssss-s2d", 640, 36.9),
    )
}


class UnknownWeights(ValueError):
    """No official checkpoint has this name."""


def official_weights(name: str) -> OfficialWeights:
    try:
        return OFFICIAL_WEIGHTS[name]
    except KeyError:
        known = ", ".join(OFFICIAL_WEIGHTS)
        raise UnknownWeights(f"no official checkpoint named {name!r} (known: {known})") from None
