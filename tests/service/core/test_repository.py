"""The model repository's layout and version policies, on folders built by each test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.repository import RepositoryError, VersionPolicy, check_name, scan

pytestmark = pytest.mark.unit


def model(folder: Path) -> Path:
    """A folder holding a model.json (scan reads no further than its presence)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text("{}")
    return folder


def test_versions_bare_models_and_what_is_not_a_model(tmp_path: Path) -> None:
    model(tmp_path / "big" / "1")
    model(tmp_path / "big" / "3")
    model(tmp_path / "big" / "10")  # numeric order, not text order
    (tmp_path / "big" / "2").mkdir()  # a version folder without a model.json: not a version
    model(tmp_path / "big" / "0")  # versions start at 1
    model(tmp_path / "big" / "v4")  # not a number
    model(tmp_path / "small")  # bare: version 1
    (tmp_path / "notes").mkdir()  # no model.json anywhere: not an attempt at a model
    model(tmp_path / ".hidden")
    (tmp_path / "README.md").write_text("a file")
    model(tmp_path / "bad name")
    model(tmp_path / "cam_image")  # the v2 image variant's suffix
    model(tmp_path / "mixed")
    model(tmp_path / "mixed" / "2")
    repository = scan(tmp_path)
    assert list(repository.models) == ["big", "small"]
    assert sorted(repository.models["big"].versions) == [1, 3, 10]
    assert repository.models["big"].versions[10] == tmp_path / "big" / "10"
    assert repository.models["small"].versions == {1: tmp_path / "small"}
    assert [(v.name, v.version) for v in repository.models["big"].served] == [("big", 10)]  # latest 1
    assert set(repository.problems) == {"bad name", "cam_image", "mixed"}
    assert "keep one layout" in repository.problems["mixed"]


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        (None, [7]),
        ({"latest": {"num_versions": 2}}, [7, 5]),
        ({"latest": {}}, [7]),
        ({"all": {}}, [7, 5, 2, 1]),
        ({"specific": {"versions": [1, 5, 9]}}, [5, 1]),  # 9 is not there: not served
    ],
)
def test_a_models_config_chooses_the_versions_served(tmp_path: Path, policy, served) -> None:
    for version in (1, 2, 5, 7):
        model(tmp_path / "m" / str(version))
    if policy is not None:
        (tmp_path / "m" / "config.json").write_text(json.dumps({"version_policy": policy}))
    assert [v.version for v in scan(tmp_path).models["m"].served] == served


@pytest.mark.parametrize(
    "config",
    [
        "{not json",
        json.dumps({"version_policy": {"newest": {}}}),
        json.dumps({"version_policy": {"latest": {"num_versions": 0}}}),
        json.dumps({"version_policy": {"latest": {"num_versions": True}}}),
        json.dumps({"version_policy": {"specific": {"versions": []}}}),
        json.dumps({"version_policy": {"specific": {"versions": [1, "2"]}}}),
        json.dumps({"version_policy": {"all": {}, "latest": {}}}),
        json.dumps({"max_batch": 8}),
    ],
)
def test_a_broken_config_leaves_its_model_out_with_the_reason(tmp_path: Path, config: str) -> None:
    model(tmp_path / "m" / "1")
    model(tmp_path / "ok" / "1")
    (tmp_path / "m" / "config.json").write_text(config)
    repository = scan(tmp_path)
    assert list(repository.models) == ["ok"]
    assert repository.problems["m"].startswith("m/config.json")


def test_policy_selection_equals_its_definition() -> None:
    """Against a brute-force reading of each policy, over every subset of versions 1..6."""
    from itertools import combinations

    policies = [VersionPolicy(latest=n) for n in (1, 2, 3)]
    policies += [VersionPolicy(latest=None), VersionPolicy(latest=None, specific=frozenset({2, 4, 9}))]
    for size in range(7):
        for present in combinations(range(1, 7), size):
            for policy in policies:
                newest_first = sorted(present, reverse=True)
                if policy.latest is not None:
                    want = newest_first[: policy.latest]
                elif policy.specific is not None:
                    want = [v for v in newest_first if v in policy.specific]
                else:
                    want = newest_first
                assert policy.select(present) == want


def test_names_and_a_missing_repository(tmp_path: Path) -> None:
    for good in ("yolor_p6", "cars-v2", "a.b", "X" * 64, "1"):
        assert check_name(good) == good
    for bad in ("", ".hidden", "a/b", "a b", "X" * 65, "cars_image", "é"):
        with pytest.raises(RepositoryError):
            check_name(bad)
    with pytest.raises(RepositoryError, match="is not a folder"):
        scan(tmp_path / "nowhere")
