"""model.json: the head contract is checked when a manifest is read."""

from __future__ import annotations

import json

import pytest

from service.manifest import ManifestError, load_manifest
from service.settings import DEMO_MODEL_DIR
from tests.support.model_files import CLASS_NAMES, TOP_K, write_model_dir

pytestmark = pytest.mark.unit


def _rewrite(directory, **changes) -> None:
    data = json.loads((directory / "model.json").read_text())
    for dotted, value in changes.items():
        target = data
        *parents, key = dotted.split("__")
        for parent in parents:
            target = target[parent]
        target[key] = value
    (directory / "model.json").write_text(json.dumps(data))


def test_the_bundled_demo_manifest_and_the_test_ones_are_valid(tmp_path):
    assert load_manifest(DEMO_MODEL_DIR).output.columns == ["x1", "y1", "x2", "y2", "score", "class_id"]
    for head in ("topk", "raw"):
        write_model_dir(tmp_path / head, head=head)
        assert load_manifest(tmp_path / head).head == head


@pytest.mark.parametrize(
    ("head", "changes", "message"),
    [
        ("topk", {"output__columns": ["x1", "y1", "x2", "y2", "class_id", "score"]}, "columns must be"),
        ("topk", {"output__shape": ["batch", TOP_K, 7]}, "output shape must be"),
        ("topk", {"top_k": None}, "needs top_k"),
        ("raw", {"output__shape": ["batch", 12, 4 + len(CLASS_NAMES)]}, "output shape must be"),
        ("raw", {"output__columns": ["cx", "cy", "w", "h", "obj", "a", "b", "c"]}, "columns must be"),
        ("raw", {"head": "nms"}, "head"),
    ],
)
def test_a_manifest_that_breaks_its_head_contract_is_refused(tmp_path, head, changes, message):
    write_model_dir(tmp_path, head=head)
    _rewrite(tmp_path, **changes)
    with pytest.raises(ManifestError, match=message) as refused:
        load_manifest(tmp_path)
    assert "\n" not in str(refused.value) and "errors.pydantic.dev" not in str(refused.value)  # one line


def test_one_images_output_shape_and_the_one_writer(tmp_path):
    from service.manifest import load_manifest
    from tests.support.model_files import TOP_K, write_model_dir

    topk = write_model_dir(tmp_path / "topk")
    assert topk.image_output_shape == (TOP_K, 6)
    raw = write_model_dir(tmp_path / "raw", head="raw", raw_rows=12)
    named = raw.model_copy(update={"output": raw.output.model_copy(update={"shape": ["batch", "rows", 8]})})
    assert raw.image_output_shape == (12, 8) and named.image_output_shape == (None, 8)
    assert named.write(tmp_path / "raw").name == "model.json" and load_manifest(tmp_path / "raw") == named
