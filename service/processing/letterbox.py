"""YOLOR letterbox resize (fixed target size), its exact box inverse, and input-tensor packing.

All boxes are ``(N, 4)`` xyxy in pixels. Images are ``(H, W, 3)`` uint8; grayscale or
4-channel images must be converted by the caller (e.g. ``cv2.cvtColor``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import numpy.typing as npt

from service.processing.boxes import FloatArray, as_boxes, result_float_dtype

DEFAULT_PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an image was letterboxed, with everything needed to map boxes back exactly.

    ``scale_x = new_w / w`` and ``scale_y = new_h / h`` are the actual resize factors (they
    differ slightly from the nominal ratio because the resized size is rounded to whole pixels).
    ``pad_left`` / ``pad_top`` are the pixels of border added left of / above the resized image.
    ``source_hw`` is the original ``(h, w)`` and ``target_hw`` the letterboxed ``(th, tw)``.
    """

    scale_x: float
    scale_y: float
    pad_left: int
    pad_top: int
    source_hw: tuple[int, int]
    target_hw: tuple[int, int]

    def from_source(self, height: int, width: int) -> Letterbox:
        """The same letterbox seen from a `height` x `width` original that was first shrunk to
        `source_hw` (a JPEG decoded at reduced scale): boxes then map back to the original."""
        small_h, small_w = self.source_hw
        return replace(
            self,
            scale_x=self.scale_x * small_w / width,
            scale_y=self.scale_y * small_h / height,
            source_hw=(height, width),
        )


def _target_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    target = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(target) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in target):
        raise ValueError(f"size must be a positive int or a (height, width) pair of them, got {size!r}")
    return int(target[0]), int(target[1])


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be (H, W, 3) uint8, got shape {image.shape}; convert grayscale/BGRA first"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")


def letterbox(
    image: np.ndarray,
    size: int | tuple[int, int],
    color: int = DEFAULT_PAD_VALUE,
    scaleup: bool = True,
) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """Resize ``image`` keeping aspect ratio and pad it to exactly ``size``, as official YOLOR does.

    ``image`` is ``(h, w, 3)`` uint8 (any channel order; it is kept). ``size`` is an int (square)
    or ``(th, tw)``. The scale is ``r = min(th / h, tw / w)``, capped at 1 when ``scaleup`` is
    False; the resized size is ``(round(w * r), round(h * r))`` (at least 1 pixel), resized with
    ``INTER_LINEAR`` only if it differs, then centred on a ``color`` border.

    Returns the new ``(th, tw, 3)`` uint8 image (never a view of the input) and its ``Letterbox``.
    Raises ValueError for non-``(H, W, 3)`` / non-uint8 / empty images or a bad ``size``.
    """
    _check_image(image)
    resized, info = _resized(image, size, scaleup)
    top, left = info.pad_top, info.pad_left
    bottom, right = info.target_hw[0] - resized.shape[0] - top, info.target_hw[1] - resized.shape[1] - left
    bordered = cv2.copyMakeBorder(
        np.ascontiguousarray(resized), top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color,) * 3
    )
    return np.asarray(bordered, dtype=np.uint8), info


def _resized(image: np.ndarray, size: int | tuple[int, int], scaleup: bool) -> tuple[np.ndarray, Letterbox]:
    """The letterbox's resize of `image` (the image itself when the size is unchanged) and its geometry."""
    target_h, target_w = _target_hw(size)
    height, width = image.shape[:2]
    ratio = min(target_h / height, target_w / width)
    if not scaleup:
        ratio = min(ratio, 1.0)
    new_w = max(1, round(width * ratio))
    new_h = max(1, round(height * ratio))
    pad_w = (target_w - new_w) / 2
    pad_h = (target_h - new_h) / 2

    resized = image
    if (width, height) != (new_w, new_h):
        resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    info = Letterbox(
        scale_x=new_w / width,
        scale_y=new_h / height,
        pad_left=round(pad_w - 0.1),
        pad_top=round(pad_h - 0.1),
        source_hw=(height, width),
        target_hw=(target_h, target_w),
    )
    return resized, info


def letterbox_tensor(
    image: np.ndarray, size: int | tuple[int, int], color: int = DEFAULT_PAD_VALUE
) -> tuple[npt.NDArray[np.float32], Letterbox]:
    """``letterbox`` and ``to_input_tensor`` of one RGB image in one step, without the padded uint8
    copy: a ``(3, th, tw)`` float32 tensor equal to ``to_input_tensor([letterbox(image, size,
    color)[0]])[0]``, and its ``Letterbox``. ``image`` may be a view (a window of a larger image)."""
    _check_image(image)
    resized, info = _resized(image, size, scaleup=True)
    tensor = np.full((3, *info.target_hw), np.float32(color) / np.float32(255.0), dtype=np.float32)
    top, left = info.pad_top, info.pad_left
    region = tensor[:, top : top + resized.shape[0], left : left + resized.shape[1]]
    np.divide(resized.transpose(2, 0, 1), np.float32(255.0), out=region, dtype=np.float32, casting="unsafe")
    return tensor, info


def letterbox_boxes(boxes: npt.ArrayLike, lb: Letterbox) -> FloatArray:
    """Map ``(N, 4)`` xyxy boxes from original-image pixels to letterboxed-image pixels.

    ``x' = x * scale_x + pad_left``, ``y' = y * scale_y + pad_top``. Returns a new float32 array
    (float64 for float64 input); no clipping.
    """
    xyxy = as_boxes(boxes)
    dtype = result_float_dtype(xyxy)
    out = xyxy.astype(np.float64, copy=True)
    out[:, [0, 2]] = out[:, [0, 2]] * lb.scale_x + lb.pad_left
    out[:, [1, 3]] = out[:, [1, 3]] * lb.scale_y + lb.pad_top
    return out.astype(dtype, copy=False)


def scale_boxes(boxes: npt.ArrayLike, lb: Letterbox, clip: bool = True) -> FloatArray:
    """Map ``(N, 4)`` xyxy boxes from letterboxed-input pixels back to original-image pixels.

    ``x = (x' - pad_left) / scale_x``, ``y = (y' - pad_top) / scale_y``; with ``clip`` the result
    is clipped to ``[0, w]`` / ``[0, h]`` of the original image. Returns a new float32 array
    (float64 for float64 input); the input is not modified.
    """
    xyxy = as_boxes(boxes)
    dtype = result_float_dtype(xyxy)
    out = xyxy.astype(np.float64, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_left) / lb.scale_x
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_top) / lb.scale_y
    if clip:
        height, width = lb.source_hw
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0.0, width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0.0, height)
    return out.astype(dtype, copy=False)


def to_input_tensor(images: Sequence[np.ndarray]) -> npt.NDArray[np.float32]:
    """Pack letterboxed images into a model input batch.

    ``images``: a non-empty sequence of same-shape ``(H, W, 3)`` uint8 **RGB** images (OpenCV
    decodes BGR: the caller converts with ``cv2.cvtColor(img, cv2.COLOR_BGR2RGB)`` first).
    Returns a C-contiguous ``(B, 3, H, W)`` float32 array with values in ``[0, 1]`` (pixel / 255).
    """
    if len(images) == 0:
        raise ValueError("images must not be empty")
    for image in images:
        _check_image(image)
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"all images must have the same shape, got {sorted(shapes)}")
    batch_hwc = np.stack(images)
    tensor = np.ascontiguousarray(batch_hwc.transpose(0, 3, 1, 2), dtype=np.float32)
    tensor /= np.float32(255.0)
    return tensor
