"""yolor train end to end on a tiny synthetic set: checkpoints, resume, fine-tuning, export, serving."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import yolor
from train.data.synth import SynthOptions, write_dataset
from train.optim import transfer_weights
from train.trainer import TrainConfig, train

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, train=16, val=6, seed=3, options=SynthOptions(size=128, max_objects=4))
    return root / "dataset.json"


def config(dataset, out_dir, **overrides) -> TrainConfig:
    base = TrainConfig(
        data=dataset,
        out_dir=out_dir,
        arch="yolor_csp",
        depth=0.33,
        width=0.125,
        img_size=128,
        epochs=2,
        batch_size=8,
        nominal_batch=8,  # one optimiser (and EMA) step per batch, even during warm-up
        workers=0,
        seed=0,
    )
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    metrics = train(config(dataset, out))
    return out, metrics


def test_training_writes_loadable_checkpoints(trained):
    out, metrics = trained
    assert {"map50", "map50_95"} <= set(metrics)
    for name in ("last.pt", "best.pt"):
        raw = torch.load(out / name, weights_only=True)  # our format: no pickled code
        assert raw["arch"] == "yolor_csp" and raw["epoch"] in (0, 1)
        assert raw["train_config"]["img_size"] == 128
        model = yolor.load_model(out / name)
        assert model.class_names == ["circle", "rectangle", "triangle", "star", "cross", "ellipse", "ring"]
        assert model.input_size == 128
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["ema_updates"] > 0
    # the default optimiser is the official SGD: momentum buffers, no Adam moments
    states = list(last["optimizer"]["state"].values())
    assert states and all("momentum_buffer" in st and "exp_avg" not in st for st in states)


def test_adam_is_used_when_asked(dataset, tmp_path):
    train(config(dataset, tmp_path, optimizer="adam", epochs=1, max_steps=2))
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    states = list(last["optimizer"]["state"].values())
    assert states and all("exp_avg" in st and "momentum_buffer" not in st for st in states)
    assert all(g["betas"][1] == 0.999 for g in last["optimizer"]["param_groups"])


def test_resume_continues_from_last(dataset, trained, tmp_path):
    out, _ = trained
    run = tmp_path / "resumed"
    run.mkdir()
    (run / "last.pt").write_bytes((out / "last.pt").read_bytes())
    before = torch.load(run / "last.pt", weights_only=True)
    best = train(config(dataset, run, epochs=3, resume=True))
    after = torch.load(run / "last.pt", weights_only=True)
    assert after["epoch"] == 2  # only the third epoch ran
    # the best metrics of the whole run, not the last epoch's
    fitness = 0.1 * after["metrics"]["map50"] + 0.9 * after["metrics"]["map50_95"]
    improved = fitness > before["best_fitness"]
    assert best == after["best_metrics"] == (after["metrics"] if improved else before["best_metrics"])
    assert after["ema_updates"] > before["ema_updates"]
    changed = [
        k
        for k, v in after["state_dict"].items()
        if v.is_floating_point() and not torch.equal(v, before["state_dict"][k])
    ]
    assert changed


def test_resume_refuses_other_settings_and_the_cli_takes_the_saved_ones(dataset, trained, tmp_path):
    from cli import main

    out, _ = trained
    (tmp_path / "last.pt").write_bytes((out / "last.pt").read_bytes())
    with pytest.raises(ValueError, match=r"these differ: optimizer 'sgd' -> 'adam'"):
        train(config(dataset, tmp_path, optimizer="adam", resume=True, epochs=3))
    # `yolor train --out RUN --resume`: nothing else needed, the run's own settings continue
    assert main(["train", "--out", str(tmp_path), "--resume", "--epochs", "3", "--workers", "0"]) == 0
    saved = torch.load(out / "last.pt", weights_only=True)["train_config"]
    resumed = torch.load(tmp_path / "last.pt", weights_only=True)
    assert resumed["epoch"] == 2
    changed = {k for k, v in resumed["train_config"].items() if v != saved[k]}
    assert changed == {"out_dir", "resume", "epochs"}


def test_resume_without_checkpoint_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no .*last\.pt to resume from"):
        train(config(dataset, tmp_path, resume=True))


def test_fine_tuning_to_another_class_count_reinitialises_only_the_head():
    source = yolor.build_model("yolor_csp", nc=7, depth=0.33, width=0.125)
    target = yolor.build_model("yolor_csp", nc=2, depth=0.33, width=0.125)
    skipped = transfer_weights(source, target)
    head = {f"net.head.levels.{i}.pred.{p}" for i in range(3) for p in ("weight", "bias")}
    head |= {f"net.head.im.{i}.implicit" for i in range(3)}
    assert set(skipped) == head
    src, dst = source.state_dict(), target.state_dict()
    for name, value in dst.items():
        if name not in head:
            assert torch.equal(value, src[name]), name


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.api
@pytest.mark.anyio
async def test_train_export_serve_round_trip(trained, tmp_path):
    from export.pipeline import ExportOptions, run_export
    from service.http.app import create_app
    from service.settings import Settings
    from tests.support.app import encode, files, running

    out, _ = trained
    run_export(ExportOptions(checkpoint=out / "best.pt", out_dir=tmp_path / "model", top_k=50))
    app = create_app(Settings(model_dir=tmp_path / "model", backend="onnxruntime", device="cpu"))
    image = np.zeros((90, 150, 3), np.uint8)
    image[20:60, 40:100] = (255, 40, 40)
    async with running(app) as client:
        info = (await client.get("/model")).json()
        r = await client.post("/detect", files=files(encode(image)), params={"conf": 0.001})
    assert info["arch"] == "yolor_csp" and info["class_names"][0] == "circle"
    assert r.status_code == 200
    (result,) = r.json()["results"]
    assert (result["width"], result["height"]) == (150, 90)
    for det in result["detections"]:  # boxes come back in the original image's pixels
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 150 and 0 <= y1 <= y2 <= 90


def test_eval_command_agrees_with_training_and_export(trained, dataset, tmp_path):
    """`yolor eval` on the checkpoint reproduces the mAP the trainer logged for it, and the exported
    ONNX (what the service runs) scores the same."""
    from export.pipeline import ExportOptions, run_export
    from train.eval_model import evaluate_model

    out, _ = trained
    logged = torch.load(out / "best.pt", weights_only=True)["metrics"]
    on_checkpoint = evaluate_model(out / "best.pt", dataset)
    assert on_checkpoint["images"] == 6
    assert on_checkpoint["map50"] == pytest.approx(logged["map50"], abs=2e-3)
    assert on_checkpoint["map50_95"] == pytest.approx(logged["map50_95"], abs=2e-3)
    run_export(ExportOptions(checkpoint=out / "best.pt", out_dir=tmp_path / "model"))
    on_export = evaluate_model(tmp_path / "model", dataset)
    assert on_export["map50"] == pytest.approx(on_checkpoint["map50"], abs=5e-3)


def test_lr0_defaults_to_the_official_value_of_each_optimizer(tmp_path):
    assert TrainConfig(data=tmp_path, out_dir=tmp_path).lr0 == 0.01
    assert TrainConfig(data=tmp_path, out_dir=tmp_path, optimizer="adam").lr0 == 0.001
    assert TrainConfig(data=tmp_path, out_dir=tmp_path, optimizer="adam", lr0=0.002).lr0 == 0.002
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        TrainConfig(data=tmp_path, out_dir=tmp_path, optimizer="rmsprop")
