"""Class filter parsing (ids and names) for detect requests; pre-processing of one upload."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.core.errors import InvalidParameter
from service.core.images import decode, decode_image
from service.core.options import resolve_classes
from service.core.preprocess import REDUCED_DECODE_MARGIN, Preprocessor, preprocess
from service.processing import scale_boxes
from tests.service.core.test_images import with_exif_orientation
from tests.support.model_files import write_model_dir

pytestmark = pytest.mark.unit

NAMES = ["person", "car", "traffic light"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, None),
        ([], None),
        ([1], (1,)),
        (["car"], (1,)),
        (["2,person"], (0, 2)),
        (["traffic light", "0", 0], (0, 2)),
        ([" car , 1 "], (1,)),
        ([","], None),
    ],
)
def test_resolve_classes(values, expected):
    assert resolve_classes(values, NAMES) == expected


@pytest.mark.parametrize("values", [["cat"], [3], ["-1"], ["3"], ["Car"]])
def test_unknown_classes_are_refused(values):
    with pytest.raises(InvalidParameter):
        resolve_classes(values, NAMES)


@pytest.mark.parametrize(("width", "height", "orientation"), [(1301, 977, 1), (1301, 977, 6), (977, 1301, 8)])
def test_reduced_decoding_maps_boxes_back_to_the_full_image(tmp_path, width, height, orientation):
    """A white box found in the input tensor maps back onto where it is in the full image, with
    and without reduced decoding (1/2 here: twice the 320 px letterbox), and the reported size is the
    full image's."""
    manifest = write_model_dir(tmp_path, input_size=320)
    image = np.zeros((height, width, 3), np.uint8)
    image[200:601, 300:751] = 255  # x 300..751, y 200..601 as stored
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = with_exif_orientation(jpeg.tobytes(), orientation)
    shown = decode_image(data, 10**9)  # as a viewer shows it
    ys, xs = np.nonzero(shown[..., 0] > 127)
    truth = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    for reduced in (False, True):
        prepared = preprocess(data, manifest, max_pixels=10**9, reduced_decode=reduced)
        assert prepared.lb.source_hw == shown.shape[:2]
        ys, xs = np.nonzero(prepared.tensor[0] > 0.5)
        found = scale_boxes(
            np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32), prepared.lb
        )
        pixel = 1 / min(prepared.lb.scale_x, prepared.lb.scale_y)  # one input pixel in full-image pixels
        assert found[0] == pytest.approx(truth, abs=1.5 * pixel)
    assert decode(data, 10**9, fit=320).image.shape[0] == -(-shown.shape[0] // 4)  # it was reduced


@pytest.mark.parametrize(("margin", "factor"), [(1.0, 8), (2.0, 4), (4.0, 2), (8.0, 1)])
def test_reduced_decoding_keeps_its_margin_over_the_letterbox(tmp_path, margin, factor):
    """A 2048x1536 JPEG for a 256 px input (a 256x192 letterbox) is decoded at the largest scale-down
    that still leaves `margin` x the letterbox's pixels on each side."""
    manifest = write_model_dir(tmp_path, input_size=256)
    ok, jpeg = cv2.imencode(".jpg", np.full((1536, 2048, 3), 90, np.uint8))
    assert ok
    kept = {}
    for reduced in (True, False):
        pre = Preprocessor(manifest, max_pixels=10**9, reduced_decode=reduced, reduce_margin=margin)
        kept[reduced] = pre.open(jpeg.tobytes()).decoded
    assert kept[True].image.shape[:2] == (1536 // factor, 2048 // factor)
    assert kept[True].image.shape[1] >= margin * 256
    assert kept[False].image.shape[:2] == (1536, 2048)
    assert (kept[True].width, kept[True].height) == (2048, 1536)  # the full image's size, still
    default = Preprocessor(manifest, max_pixels=10**9, reduced_decode=True)
    assert default.reduce_margin == REDUCED_DECODE_MARGIN
