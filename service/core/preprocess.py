"""Pre-processing of one uploaded file: decode it (`service.core.images`), plan the windows a sliced
image is cut into (`service.core.tiling`), and letterbox each pass (a window, or the whole image)
into the model's input tensor. Runs in the decode thread pool.

Three records, from the file to the batcher: an `Upload` (the decoded image and its windows), its
`Pass`es (one input tensor each, with the letterbox that maps its boxes back), and the `ImageInput`
(all passes of one image, the whole image's last).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.core.images import Decoded, decode
from service.core.options import NO_TILING
from service.core.tiling import TileOptions, Window
from service.manifest import ModelManifest
from service.processing import Letterbox, letterbox_tensor

_NO_TENSOR = np.zeros((0,), np.float32)


@dataclass(frozen=True)
class Pass:
    """One model input of an image: the whole image, or one window of a sliced image."""

    tensor: np.ndarray  # (3, S, S) float32; empty once handed to the batcher (`without_tensor`)
    lb: Letterbox  # the window's (or image's) pixels <-> input pixels
    offset: tuple[int, int]  # the window's top-left (x, y) in the image

    def without_tensor(self) -> Pass:
        """This pass, its tensor dropped: a sliced image's submitted windows are not held twice."""
        return Pass(_NO_TENSOR, self.lb, self.offset)


@dataclass(frozen=True)
class Upload:
    """An uploaded file decoded, with the windows it is to be sliced into (none: untiled)."""

    decoded: Decoded
    windows: list[Window]


@dataclass(frozen=True)
class ImageInput:
    """Every pass of one image (a sliced image's windows, then always the whole image), its size,
    and the decoded image when it is to be drawn on."""

    passes: tuple[Pass, ...]
    height: int
    width: int
    image: np.ndarray | None  # RGB original, kept only when it will be drawn on

    @classmethod
    def of(cls, upload: Upload, passes: Sequence[Pass], keep_image: bool) -> ImageInput:
        image = upload.decoded.image if keep_image else None
        return cls(tuple(passes), upload.decoded.height, upload.decoded.width, image)

    @property
    def tiles(self) -> int:
        return len(self.passes) - 1

    @property
    def tensor(self) -> np.ndarray:
        """The whole image's input tensor."""
        return self.passes[-1].tensor

    @property
    def lb(self) -> Letterbox:
        return self.passes[-1].lb


# Reduced decoding keeps the decoded image at least this many times the letterbox on each side, so
# that the letterbox's own resize still averages over 2 x 2 source pixels or more: its measured
# accuracy cost (docs/benchmarks.md, "Reduced JPEG decoding").
REDUCED_DECODE_MARGIN = 2.0


class Preprocessor:
    """Decode and letterbox for one model's input, within the server's limits.

    `reduced_decode`: a large JPEG is decoded at reduced scale (`service.core.images.decode`), no
    smaller than `reduce_margin` x the letterbox, unless the full image is kept (to draw on) or sliced;
    the letterbox still maps boxes to the full image.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        *,
        max_pixels: int,
        reduced_decode: bool = False,
        reduce_margin: float = REDUCED_DECODE_MARGIN,
        max_tiles: int = 1,
    ) -> None:
        self.manifest, self.max_pixels = manifest, max_pixels
        self.reduced_decode, self.reduce_margin, self.max_tiles = reduced_decode, reduce_margin, max_tiles

    def open(self, data: bytes, *, keep_image: bool = False, tile: TileOptions = NO_TILING) -> Upload:
        """Decode one file and plan its windows (`TileOptions.windows`, at most `max_tiles`)."""
        size = self.manifest.input_size
        reduce = self.reduced_decode and not keep_image and tile.mode == "off"
        fit = round(size * self.reduce_margin) if reduce else None
        decoded = decode(data, self.max_pixels, fit=fit)
        windows = tile.windows(decoded.height, decoded.width, input_size=size, max_tiles=self.max_tiles)
        return Upload(decoded, windows)

    def passes(self, upload: Upload, jobs: Sequence[Window | None]) -> list[Pass]:
        """The input tensors of `jobs`: each a window of the image, or None for the whole image."""
        passes, image, pad = [], upload.decoded.image, self.manifest.input.letterbox_pad
        height, width = upload.decoded.height, upload.decoded.width  # the full image's (maybe not decoded's)
        for window in jobs:
            x1, y1, x2, y2 = window or (0, 0, image.shape[1], image.shape[0])
            tensor, lb = letterbox_tensor(image[y1:y2, x1:x2], self.manifest.input_size, color=pad)
            if window is None and lb.source_hw != (height, width):  # decoded at reduced scale
                lb = lb.from_source(height, width)
            passes.append(Pass(tensor, lb, (x1, y1)))
        return passes

    def whole(self, data: bytes, *, keep_image: bool = False) -> ImageInput:
        """An untiled file: decode + letterbox of the whole image."""
        upload = self.open(data, keep_image=keep_image)
        return ImageInput.of(upload, self.passes(upload, [None]), keep_image)


def preprocess(
    data: bytes,
    manifest: ModelManifest,
    *,
    max_pixels: int,
    keep_image: bool = False,
    reduced_decode: bool = False,
) -> ImageInput:
    """Decode + letterbox + input tensor of one file, as every untiled request does it (export's
    validation, `yolor eval` and the benchmarks use it so as to see what the server sees)."""
    preprocessor = Preprocessor(manifest, max_pixels=max_pixels, reduced_decode=reduced_decode)
    return preprocessor.whole(data, keep_image=keep_image)
