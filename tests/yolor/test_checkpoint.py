"""load_model / save_checkpoint: every accepted format, arch detection, and clear refusals."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import yolor
from tests.support.parity import (
    FIXTURES,
    fixture_meta,
    official_state_dict,
    reference_input,
    relative_error,
)
from yolor import CheckpointError

pytestmark = pytest.mark.model


def outputs(model: yolor.YOLOR, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_our_checkpoint_round_trips_and_loads_weights_only(tmp_path):
    model = yolor.build_model("yolor-w6", nc=3, depth=0.33, width=0.125, class_names=["a", "b", "c"])
    path = tmp_path / "ours.pt"
    yolor.save_checkpoint(model, path, input_size=320, epoch=7)
    raw = torch.load(path, weights_only=True)  # no pickled code needed
    assert raw["arch"] == "yolor-w6" and raw["epoch"] == 7
    loaded = yolor.load_model(path)
    assert (loaded.arch, loaded.nc, loaded.class_names, loaded.input_size) == (
        "yolor-w6",
        3,
        ["a", "b", "c"],
        320,
    )
    assert (loaded.scaling.depth, loaded.scaling.width) == (0.33, 0.125)
    x = torch.rand(1, 3, 128, 64)
    assert torch.equal(outputs(loaded, x), outputs(model, x))


def test_half_checkpoint_is_smaller_and_loads_as_the_rounded_fp32_model(tmp_path):
    model = yolor.build_model("yolor_csp", nc=2, depth=0.33, width=0.125)
    with torch.no_grad():
        model.anchors.add_(1 / 3)  # not representable in FP16: must survive exactly
    yolor.save_checkpoint(model, tmp_path / "full.pt")
    yolor.save_checkpoint(model, tmp_path / "half.pt", half=True)
    raw = torch.load(tmp_path / "half.pt", weights_only=True)["state_dict"]
    assert raw["anchors"].dtype == torch.float32
    assert {v.dtype for k, v in raw.items() if v.is_floating_point() and k != "anchors"} == {torch.float16}
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    loaded = yolor.load_model(tmp_path / "half.pt")
    assert all(v.dtype != torch.float16 for v in loaded.state_dict().values())
    assert torch.equal(loaded.anchors, model.anchors)
    for name, value in model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() and name != "anchors" else value
        assert torch.equal(loaded.state_dict()[name], expected), name


def test_our_checkpoint_with_wrong_arch_override(tmp_path):
    path = tmp_path / "ours.pt"
    yolor.save_checkpoint(yolor.build_model("yolor-p6", nc=2, depth=0.33, width=0.125), path)
    with pytest.raises(CheckpointError, match="checkpoint of yolor-p6 does not fit arch 'yolor-w6'"):
        yolor.load_model(path, arch="yolor-w6")


def _official_layout(model: yolor.YOLOR, arch_for_names: str) -> OrderedDict[str, torch.Tensor]:
    """Our weights under the official key names (names taken from the official-code fixture)."""
    meta = fixture_meta(arch_for_names)
    names = [k for k, _ in meta["keys"] if not k.endswith(("anchors", "anchor_grid"))]
    ours = [v for k, v in model.state_dict().items() if k != "anchors"]
    assert len(names) == len(ours)
    sd = OrderedDict(zip(names, ours, strict=True))
    for key in meta["fixed"]:  # paper checkpoints carry anchors: use distinctive ones
        shape = np.asarray(meta["fixed"][key]).shape
        grid = model.anchors.view(shape) if key.endswith("anchor_grid") else torch.zeros(shape)
        sd[key] = grid
    return sd


@pytest.mark.parametrize("arch", ["yolor_csp", "yolor-p6"])
def test_official_layout_with_other_class_count(tmp_path, arch):
    """nc is read from the head; arch from the tensor shapes; class names default to class0.."""
    model = yolor.build_model(arch, nc=3)
    paper = arch.startswith("yolor-")
    if paper:  # paper checkpoints carry (possibly evolved) anchors: they must be used
        with torch.no_grad():
            model.anchors.mul_(1.5)
    path = tmp_path / "official.pt"
    torch.save({"epoch": 3, "model": _official_layout(model, arch), "optimizer": None}, path)
    loaded = yolor.load_model(path)
    assert (loaded.arch, loaded.nc, loaded.class_names) == (arch, 3, ["class0", "class1", "class2"])
    assert torch.equal(loaded.anchors, model.anchors)
    x = torch.rand(1, 3, 64, 128)
    assert torch.equal(outputs(loaded, x), outputs(model, x))


def test_official_paper_pickle_loads_inertly():
    """A genuine paper-branch training checkpoint (fp16 pickled Model) made by the official code."""
    meta = json.loads((FIXTURES / "tiny_paper_official.json").read_text())
    model = yolor.load_model(FIXTURES / "tiny_paper_official.pt")
    assert model.arch == "yolor-p6"
    assert (model.scaling.depth, model.scaling.width) == (meta["depth_multiple"], meta["width_multiple"])
    assert model.class_names == meta["names"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with np.load(FIXTURES / "tiny_paper_official.npz") as ref:
        assert relative_error(outputs(model, reference_input()).numpy(), ref["decoded"]) <= 1e-5


def _exact_haar_gain_as_fp16(monkeypatch) -> None:
    """Make HaarDWT compute with the fp16-rounded db1 filters an FP16 official checkpoint stores
    (1/sqrt(2) -> 0.70703125; the official code runs with them after `.float()`)."""
    h = float(torch.tensor(2**-0.5).half())
    monkeypatch.setattr(yolor.layers.HaarDWT, "scale", h * h / 2)


def test_official_dwt_pickle_loads_inertly(monkeypatch):
    """An official yolor-ssss-dwt training checkpoint made with pytorch_wavelets installed: the pickled
    DWTForward modules (filter buffers only) are read as placeholders and tell dwt from s2d."""
    meta = json.loads((FIXTURES / "tiny_dwt_official.json").read_text())
    assert "pytorch_wavelets.dwt.transform2d.DWTForward" in meta["pickle_globals"]
    model = yolor.load_model(FIXTURES / "tiny_dwt_official.pt")
    assert model.arch == "yolor-ssss-dwt"
    # absolute yaml multipliers over the arch's own (depth 0.33, width 0.5)
    assert (model.scaling.depth, model.scaling.width) == (1.0, meta["width_multiple"] / 0.5)
    assert model.class_names == meta["names"]
    with np.load(FIXTURES / "tiny_dwt_official.npz") as ref:
        expected = ref["decoded"]
    # Ours is the exact Haar transform; the file's filters were rounded to FP16, which scales every
    # band by 0.99979 per level: 0.2% on the outputs, and nothing left once we round as it did.
    assert relative_error(outputs(model, reference_input()).numpy(), expected) <= 5e-3
    _exact_haar_gain_as_fp16(monkeypatch)
    assert relative_error(outputs(model, reference_input()).numpy(), expected) <= 1e-5


def test_dwt_pickle_without_wavelet_filters_loads_as_s2d(monkeypatch, caplog):
    """Official code without pytorch_wavelets pickles DWT modules that run ReOrg: s2d, with a warning."""
    from yolor import checkpoint

    def without_filters(root):
        return OrderedDict((k, v) for k, v in real(root).items() if ".xfm." not in k)

    real = checkpoint.inert_state_dict
    monkeypatch.setattr(checkpoint, "inert_state_dict", without_filters)
    assert yolor.load_model(FIXTURES / "tiny_dwt_official.pt").arch == "yolor-ssss-s2d"
    assert "ran them as ReOrg: loading it as yolor-ssss-s2d" in caplog.text
    assert yolor.load_model(FIXTURES / "tiny_dwt_official.pt", arch="yolor-ssss-dwt").arch == "yolor-ssss-dwt"


def test_ssss_state_dict_tells_dwt_from_s2d_by_its_wavelet_filters(tmp_path):
    """Same tensor shapes: a state dict with DWTForward filter buffers is dwt, one without is s2d
    (what the official code runs for it); an explicit arch overrides."""
    sd = official_state_dict("yolor-ssss-dwt")
    assert any(".xfm." in k for k in sd)
    with_filters, bare = tmp_path / "dwt.pt", tmp_path / "bare.pt"
    torch.save({"model": sd}, with_filters)
    torch.save({"model": OrderedDict((k, v) for k, v in sd.items() if ".xfm." not in k)}, bare)
    dwt = yolor.load_model(with_filters)
    assert dwt.arch == "yolor-ssss-dwt"
    assert yolor.load_model(bare).arch == "yolor-ssss-s2d"
    forced = yolor.load_model(bare, arch="yolor-ssss-dwt")
    assert forced.arch == "yolor-ssss-dwt"
    assert torch.equal(outputs(forced, reference_input()), outputs(dwt, reference_input()))


def test_explicit_arch_that_does_not_fit_official(tmp_path):
    path = tmp_path / "official.pt"
    model = yolor.build_model("yolor_csp", nc=80)
    torch.save({"model": _official_layout(model, "yolor_csp")}, path)
    with pytest.raises(CheckpointError, match="do not match arch 'yolor_p6'"):
        yolor.load_model(path, arch="yolor_p6")
    with pytest.raises(ValueError, match="unknown YOLOR arch"):
        yolor.load_model(path, arch="nope")


class _Payload:
    """Unpickling this would create a directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_pickled_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"references os\.makedirs.*Nothing in it was executed"):
        yolor.load_model(path)
    assert not marker.exists()


def test_missing_corrupt_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        yolor.load_model(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        yolor.load_model(junk)
    real = (FIXTURES / "tiny_paper_official.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(real[: len(real) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        yolor.load_model(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"backbone.conv.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not an official YOLOR layout"):
        yolor.load_model(foreign)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(CheckpointError, match="no YOLOR model found"):
        yolor.load_model(empty)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"arch": "yolor-x9", "state_dict": {}}, "not registered"),
        ({"arch": "yolor_csp"}, "no state_dict"),
        ({"arch": "yolor_csp", "state_dict": {"anchors": torch.zeros(3, 3, 2)}}, "does not fit"),
    ],
)
def test_a_malformed_checkpoint_of_ours_is_a_checkpoint_error(tmp_path, content, message):
    from yolor.checkpoint import FORMAT

    path = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, **content}, path)
    with pytest.raises(CheckpointError, match=message):
        yolor.load_model(path)
