"""The YOLOR training objective: anchor assignment, CIoU, and that it trains."""

from __future__ import annotations

import math

import pytest
import torch

import yolor
from train.loss import YOLORLoss, bbox_ciou, build_targets
from train.optim import init_head_biases

pytestmark = pytest.mark.model


def test_assignment_hand_computed_case():
    # One box of class 1 in image 0 on a 64x64 input, level of stride 8 (8x8 grid):
    # centre (4.3, 4.7) cells, size (0.8, 1.6) cells.
    target = torch.tensor([[0, 1, 4.3 / 8, 4.7 / 8, 0.8 / 8, 1.6 / 8]])
    anchors = torch.tensor([[1.0, 2.0], [4.0, 4.0], [0.1, 0.1]])  # grid units
    (lt,) = build_targets([(8, 8)], target, [anchors], anchor_t=4.0)
    # Anchor 0 only (ratios 1.25; anchor 1: 5x, anchor 2: 16x > 4). Cells: the centre (4, 4), its left
    # neighbour (x frac .3 < .5) and its lower neighbour (y frac .7 > .5, so 1 - .7 < .5).
    cells = sorted(zip(lt.gx.tolist(), lt.gy.tolist(), strict=True))
    assert cells == [(3, 4), (4, 4), (4, 5)]
    assert lt.anchor.tolist() == [0, 0, 0] and lt.cls.tolist() == [1, 1, 1] and lt.image.tolist() == [0, 0, 0]
    by_cell = {(x, y): box.tolist() for x, y, box in zip(lt.gx.tolist(), lt.gy.tolist(), lt.box, strict=True)}
    # Regression targets are offsets from each cell's corner (may leave [0, 1) for neighbours).
    assert by_cell[(4, 4)] == pytest.approx([0.3, 0.7, 0.8, 1.6], abs=1e-5)
    assert by_cell[(3, 4)] == pytest.approx([1.3, 0.7, 0.8, 1.6], abs=1e-5)
    assert by_cell[(4, 5)] == pytest.approx([0.3, -0.3, 0.8, 1.6], abs=1e-5)


def test_assignment_skips_edges_and_empty():
    anchors = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    # Centre in the first cell: no left/up neighbours (they need gxy > 1).
    (lt,) = build_targets([(4, 4)], torch.tensor([[0, 0, 0.1, 0.1, 0.25, 0.25]]), [anchors], 4.0)
    assert set(zip(lt.gx.tolist(), lt.gy.tolist(), strict=True)) == {(0, 0)}
    assert sorted(lt.anchor.tolist()) == [0, 1, 2]
    (empty,) = build_targets([(4, 4)], torch.zeros(0, 6), [anchors], 4.0)
    assert empty.image.numel() == 0


def test_ciou_known_values():
    a = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert bbox_ciou(a, a).item() == pytest.approx(1.0, abs=1e-6)
    # Same size, shifted by 1 in x: IoU 1/3, enclosing diagonal^2 = 3^2 + 2^2, centre distance^2 = 1.
    b = torch.tensor([[3.0, 2.0, 2.0, 2.0]])
    assert bbox_ciou(a, b).item() == pytest.approx(1 / 3 - 1 / 13, abs=1e-5)
    # Aspect term: v = 4/pi^2 (atan(1) - atan(2))^2 when w/h differ.
    c = torch.tensor([[2.0, 2.0, 2.0, 1.0]])
    iou = 0.5
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    alpha = v / (1 - iou + v)
    assert bbox_ciou(a, c).item() == pytest.approx(iou - v * alpha, abs=1e-5)


def test_loss_decreases_on_a_tiny_set():
    torch.manual_seed(0)
    model = yolor.build_model("yolor-p6", nc=3, depth=0.33, width=0.125).train()
    init_head_biases(model)
    loss_fn = YOLORLoss(model.anchors, model.strides, model.nc)
    images = torch.rand(2, 3, 128, 128)
    targets = torch.tensor(
        [[0, 0, 0.3, 0.3, 0.2, 0.25], [0, 2, 0.7, 0.6, 0.3, 0.2], [1, 1, 0.5, 0.5, 0.5, 0.4]]
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    history = []
    for _ in range(20):
        loss, items = loss_fn(model(images), targets)
        assert torch.isfinite(loss) and items.shape == (4,)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(items)
    first, last = history[0], history[-1]  # [box, obj, cls, total]
    assert last[3] < 0.75 * first[3]
    assert last[0] < first[0] and last[2] < first[2]


def test_loss_has_no_box_or_cls_terms_without_targets():
    model = yolor.build_model("yolor_csp", nc=2, depth=0.33, width=0.125).train()
    loss_fn = YOLORLoss(model.anchors, model.strides, model.nc)
    _, items = loss_fn(model(torch.rand(1, 3, 64, 64)), torch.zeros(0, 6))
    lbox, lobj, lcls, total = items.tolist()
    assert lbox == 0 and lcls == 0 and lobj > 0 and total == pytest.approx(lobj)
