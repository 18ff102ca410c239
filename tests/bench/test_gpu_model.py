"""`yolor bench gpu`'s pieces that need torch but no GPU: the random net, the served model folder
(loaded back as `yolor serve` loads it), the pipeline check's echo and its expected answer, and the
numerics reference with TF32 off."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from service.backends import FakeBackend
from service.backends.artifacts import resolve_artifact
from service.backends.factory import BackendMismatch, check_backend
from service.manifest import load_manifest
from service.processing.heads import head_layout

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.model

ARCH = "yolor-ssss-s2d"  # the smallest arch; 252 raw rows at 64 px


@pytest.mark.parametrize(("size", "top_k"), [(64, 252), (128, 300)])  # 252 rows at 64 px: all of them
def test_the_served_folder_is_a_top_k_model_that_the_server_loads_and_checks(tmp_path, size, top_k):
    import yolor
    from bench.gpu import OBJ_BIAS, TOP_K, random_model
    from bench.served_model import write_served_model_dir

    model = random_model(ARCH, size)
    checkpoint = tmp_path / "checkpoint.pt"
    yolor.save_checkpoint(model, checkpoint, input_size=size)
    written = write_served_model_dir(model, checkpoint, input_size=size, max_batch=32, top_k=TOP_K,
                                     source={"obj_bias": OBJ_BIAS})  # fmt: skip
    manifest = load_manifest(tmp_path)
    assert manifest == written
    assert (manifest.arch, manifest.head, manifest.top_k, manifest.max_batch) == (ARCH, "topk", top_k, 32)
    assert (manifest.nc, manifest.input_size, manifest.strides) == (80, size, list(model.strides))
    assert tuple(manifest.output.shape[1:]) == head_layout("topk").image_shape(80, top_k)
    assert manifest.source["obj_bias"] == OBJ_BIAS and manifest.source["checkpoint"] == "checkpoint.pt"
    # the files are those the manifest describes (size and sha256), as the factory resolves them
    assert resolve_artifact(tmp_path, manifest, "checkpoint") == checkpoint
    assert resolve_artifact(tmp_path, manifest, "onnx").name == "model.onnx"
    assert yolor.load_model(checkpoint).arch == ARCH
    # the torch backend with the manifest's top_k (its shapes, faked) fits; one batch more does not
    torch_backend = FakeBackend(np.asarray, input_size=size, output_shape=(top_k, 6), max_batch_size=32)
    check_backend(torch_backend, manifest, 32)
    with pytest.raises(BackendMismatch, match="max batch 33"):
        check_backend(torch_backend, manifest, 33)


def test_the_random_net_proposes_almost_no_candidates():
    from bench.gpu import random_model

    model = random_model(ARCH, 64).eval()
    with torch.no_grad():
        scores = model(torch.rand(2, 3, 64, 64))[..., 4]
    assert model.input_size == 64 and scores.shape == (2, 252)
    assert float(scores.max()) < 1e-3  # objectness bias -10: sigmoid ~ 5e-5


@pytest.mark.parametrize(("rows", "columns"), [(7, 6), (40, 85)])  # fewer / more values than an image
def test_the_echo_answers_what_the_check_expects_image_by_image(rows, columns):
    from bench.gpu_checks import echo_expected, echo_forward

    batch = np.random.default_rng(0).random((5, 3, 4, 4), dtype=np.float32)
    x = torch.from_numpy(batch).half().contiguous(memory_format=torch.channels_last)  # as the backend feeds
    got = echo_forward(rows, columns)(x).numpy()
    want = echo_expected(batch, rows, columns)
    assert got.shape == want.shape == (5, rows, columns) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    order = [3, 0, 4, 1, 2]  # an image answered in another's place shows
    np.testing.assert_array_equal(echo_expected(batch[order], rows, columns), want[order])
    assert all((want[i] != want[j]).any() for i in range(5) for j in range(i))


def test_the_pipeline_check_covers_a_remainder_the_full_batch_and_one_image():
    from bench.gpu_checks import echo_batches

    assert echo_batches(32) == [(29, True), (32, False), (1, True), (8, False)]
    assert echo_batches(4) == [(4, True), (4, False), (1, True), (4, False)]


def _legacy_tf32_flags_warn(monkeypatch) -> None:
    """`torch.backends.cudnn.allow_tf32` and `torch.backends.cuda.matmul.allow_tf32` warn when read
    or set, as in torch 2.9 (the installed torch may not)."""

    def legacy(*args: object) -> None:
        warnings.warn("allow_tf32 will be deprecated after Pytorch 2.9", UserWarning, stacklevel=2)

    monkeypatch.setattr(type(torch.backends.cudnn), "allow_tf32", property(legacy, legacy))
    matmul = type(torch.backends.cuda.matmul)
    get, set_ = matmul.__getattr__, matmul.__setattr__
    monkeypatch.setattr(
        matmul, "__getattr__", lambda self, n: legacy() if n == "allow_tf32" else get(self, n)
    )
    monkeypatch.setattr(
        matmul, "__setattr__", lambda self, n, v: legacy() if n == "allow_tf32" else set_(self, n, v)
    )


class Reference:
    """The unfused net, standing in: (B, 3, 8, 8) -> (B, 16, 6), as the backend answers; records the
    TF32 state it ran under."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def to(self, device: object) -> Reference:
        return self

    eval = cpu = lambda self: self

    def __call__(self, x):
        backends = torch.backends
        self.seen.append((backends.cudnn.conv.fp32_precision, backends.cuda.matmul.fp32_precision))
        return x[:, 0, :, :6].reshape(len(x), -1, 6)


class Backend:
    def __init__(self, box_shift: float = 0.0) -> None:
        self.box_shift = box_shift

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = batch[:, 0, :, :6].reshape(len(batch), -1, 6).copy()
        out[..., :4] += self.box_shift
        return out


def test_the_numerics_reference_runs_with_tf32_off_through_the_new_api(monkeypatch):
    """From torch 2.9 the reference turns TF32 off through `fp32_precision` alone and restores it;
    the legacy flags, made to warn as in torch 2.9, would fail the call (warnings are errors)."""
    from bench.gpu_checks import numerics

    if torch.__version__ < "2.9":
        pytest.skip("torch < 2.9 has only the legacy flags")
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    _legacy_tf32_flags_warn(monkeypatch)
    reference = Reference()
    inputs = np.random.default_rng(0).random((9, 3, 8, 8), dtype=np.float32) + 1
    try:
        result = numerics(Backend(), reference, inputs, torch.device("cpu"))
    finally:
        after = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = before
    assert reference.seen == [("ieee", "ieee")] * 3  # each third of the batch
    assert after == before
    assert result["passed"] and result["rel_error"] == 0


def test_numerics_fail_a_backend_whose_boxes_are_off():
    from bench.gpu_checks import NUMERICS_TOLERANCE, numerics

    inputs = np.random.default_rng(0).random((9, 3, 8, 8), dtype=np.float32) + 1  # boxes ~1-2 px
    result = numerics(Backend(box_shift=0.02), Reference(), inputs, torch.device("cpu"))
    assert not result["passed"] and result["box_max_abs_px"] == pytest.approx(0.02, rel=1e-3)
    assert result["box_max_rel"] > NUMERICS_TOLERANCE["box_max_rel"] and result["score_max_abs"] == 0
