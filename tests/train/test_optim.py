"""Optimiser pieces: parameter groups, schedules, EMA."""

from __future__ import annotations

import pytest
import torch

import yolor
from train.optim import (
    ModelEMA,
    cosine_factor,
    init_head_biases,
    make_optimizer,
    param_groups,
    set_momentum,
    warmup_values,
)

pytestmark = pytest.mark.model


def test_param_groups_cover_every_parameter_once_with_official_decay_rules():
    model = yolor.build_model("yolor-p6", nc=3, depth=0.33, width=0.125)
    no_decay, decay, biases = param_groups(model, 5e-4)
    ids = [id(p) for g in (no_decay, decay, biases) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(("bn.weight", "implicit")) for p in no_decay["params"])
    assert all(names[id(p)].endswith("weight") and "bn" not in names[id(p)] for p in decay["params"])
    assert all(names[id(p)].endswith("bias") for p in biases["params"])
    assert (no_decay["weight_decay"], decay["weight_decay"], biases["weight_decay"]) == (0.0, 5e-4, 0.0)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_choice_is_honoured_and_warm_up_sets_its_momentum(kind):
    model = yolor.build_model("yolor_csp", nc=2, depth=0.33, width=0.125)
    opt = make_optimizer(model, kind, lr=0.01, momentum=0.937, weight_decay=5e-4)
    assert type(opt) is {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[kind]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    group = opt.param_groups[0]
    set_momentum(group, 0.8)
    assert (group["betas"][0] if kind == "adam" else group["momentum"]) == 0.8
    assert kind == "sgd" or group["betas"][1] == 0.999
    # One step actually moves the weights with that optimiser's state (Adam keeps exp_avg).
    model(torch.rand(1, 3, 64, 64))[0].sum().backward()
    opt.step()
    state = opt.state[next(iter(opt.param_groups[1]["params"]))]
    assert ("exp_avg" in state) == (kind == "adam")
    with pytest.raises(ValueError, match="sgd' or 'adam"):
        make_optimizer(model, "lion", lr=0.01, momentum=0.9, weight_decay=0.0)


@pytest.mark.parametrize("nc", [1, 7, 80])
def test_fresh_head_priors_are_the_official_ones(nc):
    model = yolor.build_model("yolor_csp", nc=nc, depth=0.33, width=0.125).eval()
    for conv in model.net.head.preds:
        conv.weight.data.zero_()
        conv.bias.data.zero_()
    for name, value in model.named_parameters():
        if name.startswith("net.head.im."):
            value.data.fill_(1.0)  # ImplicitM scales the logits: make it neutral
    init_head_biases(model)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))[0]  # (N, 5 + nc) decoded: obj and class probabilities
    # about 8 objects per 640x640 image at every level; class probability 0.6 / (nc - 0.99), which
    # for one class (no class loss) starts and stays ~0.98 instead of halving every score
    levels = [8 * 8, 4 * 4, 2 * 2]
    expected_obj = [8 / (640 / s) ** 2 / (1 + 8 / (640 / s) ** 2) for s in model.strides]  # sigmoid(log)
    obj = out[:, 4].split([3 * n for n in levels])
    for o, e in zip(obj, expected_obj, strict=True):
        assert torch.allclose(o, torch.full_like(o, e), rtol=1e-4)
    p = 0.6 / (nc - 0.99)
    assert torch.allclose(out[:, 5:], torch.full_like(out[:, 5:], p / (1 + p)), rtol=1e-4)


def test_schedules():
    assert cosine_factor(0, 10, 0.2) == pytest.approx(1.0)
    assert cosine_factor(10, 10, 0.2) == pytest.approx(0.2)
    assert cosine_factor(5, 10, 0.2) == pytest.approx(0.6)
    # Warm-up: bias LR falls from warmup_bias_lr, the others rise from 0; momentum 0.8 -> 0.937.
    assert warmup_values(0, 100, 2, 0.01, 0.1, 0.937, 0.8) == pytest.approx((0.1, 0.8))
    assert warmup_values(0, 100, 0, 0.01, 0.1, 0.937, 0.8) == pytest.approx((0.0, 0.8))
    assert warmup_values(100, 100, 1, 0.01, 0.1, 0.937, 0.8) == pytest.approx((0.01, 0.937))


def test_ema_averages_weights_but_keeps_anchors_exact():
    model = yolor.build_model("yolor_csp", nc=2, depth=0.33, width=0.125)
    ema = ModelEMA(model, decay=0.9)
    anchors = ema.ema.anchors.clone()
    before = ema.ema.net.stem[0].conv.weight.clone()
    with torch.no_grad():
        model.net.stem[0].conv.weight.add_(1.0)
    ema.updates = 100_000  # past the ramp: decay ~0.9
    ema.update(model)
    after = ema.ema.net.stem[0].conv.weight
    assert ema.current_decay() == pytest.approx(0.9)
    torch.testing.assert_close(after, before + 0.1, rtol=1e-5, atol=1e-5)  # 0.9 old + 0.1 new
    assert torch.equal(ema.ema.anchors, anchors)
    # Early on the decay ramps up from 0: the average follows the model closely.
    assert ModelEMA(model, decay=0.9999).current_decay() == 0.0
