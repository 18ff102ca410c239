"""`yolor info` and `yolor convert` through the CLI entry point."""

from __future__ import annotations

import json

import pytest
import torch

import yolor
from cli import main

pytestmark = pytest.mark.model


def test_convert_keeps_the_ema_weights_and_drops_the_training_state(tmp_path, capsys):
    torch.manual_seed(0)
    model = yolor.build_model("yolor_csp", nc=2, depth=0.33, width=0.125, class_names=["a", "b"])
    run_ckpt = tmp_path / "best.pt"  # what `yolor train` writes: EMA weights + resumable state
    yolor.save_checkpoint(
        model, run_ckpt, input_size=192, optimizer={"state": {}}, train_state_dict={}, epoch=3
    )
    out = tmp_path / "small.pt"
    assert main(["convert", str(run_ckpt), str(out), "--half"]) == 0
    raw = torch.load(out, weights_only=True)
    assert not {"optimizer", "train_state_dict", "epoch"} & set(raw)
    assert raw["state_dict"]["net.stem.0.conv.weight"].dtype == torch.float16
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert (info["arch"], info["nc"], info["class_names"], info["input_size"]) == (
        "yolor_csp",
        2,
        ["a", "b"],
        192,
    )
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(yolor.load_model(out).eval()(x), model.eval()(x), rtol=2e-2, atol=2e-2)
