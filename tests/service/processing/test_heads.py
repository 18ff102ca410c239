"""The head contract: one layout per head, the one row split everything uses."""

from __future__ import annotations

import numpy as np
import pytest

from service.processing import decode_raw_predictions, head_layout
from service.processing.heads import HEADS, TOPK_COLUMNS

pytestmark = pytest.mark.unit


def test_the_heads_and_their_layouts():
    assert HEADS == ("topk", "raw")
    topk, raw = head_layout("topk"), head_layout("raw")
    assert (topk.output_name, raw.output_name) == ("detections", "predictions")
    assert topk.columns(["a", "b"]) == list(TOPK_COLUMNS) and topk.image_shape(2, 300) == (300, 6)
    assert raw.columns(["a", "b"]) == ["cx", "cy", "w", "h", "obj", "a", "b"]
    assert raw.image_shape(2, None) == (None, 7)
    with pytest.raises(ValueError, match="top_k"):
        topk.image_shape(2, None)
    with pytest.raises(ValueError, match="unknown head 'nms'"):
        head_layout("nms")


def test_topk_rows_split_with_class_ids_rounded_not_truncated():
    rows = np.array(
        [
            [1, 2, 3, 4, 0.9, 1.9999998],  # float-coded 2 a hair below: 2, not 1
            [5, 6, 7, 8, 0.5, 3.0000002],
            [0, 0, 1, 1, 0.1, 0.0],  # under conf
        ],
        np.float32,
    )
    boxes, scores, class_ids = head_layout("topk").candidates(rows, conf=0.25)
    np.testing.assert_array_equal(boxes, rows[:2, :4])
    np.testing.assert_array_equal(scores, rows[:2, 4])
    assert class_ids.dtype == np.int64 and class_ids.tolist() == [2, 3]


def test_topk_refuses_a_wrong_row_width_and_multi_label():
    with pytest.raises(ValueError, match=r"shape \(K, 6\)"):
        head_layout("topk").candidates(np.zeros((3, 7), np.float32), 0.25)
    with pytest.raises(ValueError, match="--head raw"):
        head_layout("topk").candidates(np.zeros((3, 6), np.float32), 0.25, multi_label=True)


@pytest.mark.parametrize("multi_label", [False, True])
def test_raw_rows_are_decoded_as_official_nms_does(multi_label):
    rng = np.random.default_rng(0)
    pred = rng.random((50, 5 + 4), dtype=np.float32) * [64, 64, 20, 20, 1, 1, 1, 1, 1]
    got = head_layout("raw").candidates(pred, 0.3, multi_label=multi_label)
    want = decode_raw_predictions(pred, 0.3, multi_label=multi_label)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert len(got[0]) > 0
