"""The model repository (`YOLOR_MODEL_REPOSITORY`): the models and versions a folder holds, and which
versions of each to serve. Read only: loading is the caller's (service.core.model).

Layout, Triton's with our manifest as the unit:

    <repository>/<name>/<version>/model.json   a version: a folder named by a positive integer
    <repository>/<name>/model.json             a bare model folder: version 1
    <repository>/<name>/config.json            optional: {"version_policy": ...}, as Triton's

A name is what requests use (`?model=`, the v2 URLs): letters, digits, `_`, `-` and `.`, at most 64,
not starting with `.`, and not ending with the v2 image variant's suffix. Anything else in the
folder (other files, hidden folders, a version folder without a model.json) is not a model: the
index leaves it out, and `problems` says why for the ones that look like an attempt at one.

Version policies (Triton's `version_policy`): `{"latest": {"num_versions": N}}` (the default, N=1),
`{"all": {}}`, `{"specific": {"versions": [1, 3]}}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.manifest import MANIFEST_NAME
from service.settings import Settings

CONFIG_NAME = "config.json"
IMAGE_SUFFIX = "_image"  # the v2 image variant's name is `<name>_image`: a model may not be named so
MODEL_NAME = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$"  # also the pattern of a request's `model`
NAME = re.compile(MODEL_NAME)


class RepositoryError(ValueError):
    """The repository, a model's config.json or a version policy is unusable (the reason says where)."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served: the `latest` N, `all`, or the `specific` ones."""

    latest: int | None = 1
    specific: frozenset[int] | None = None  # with latest None: these versions (None: all of them)

    @classmethod
    def parse(cls, data: Any, where: str = "version_policy") -> VersionPolicy:
        """Triton's JSON form (see the module's docstring)."""
        if not isinstance(data, dict) or len(data) != 1:
            raise RepositoryError(
                f'{where}: one of latest, all, specific, e.g. {{"latest": {{"num_versions": 1}}}}'
            )
        ((kind, body),) = data.items()
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise RepositoryError(f"{where}.{kind}: an object")
        if kind == "all" and not body:
            return cls(latest=None, specific=None)
        if kind == "latest" and set(body) <= {"num_versions"}:
            count = body.get("num_versions", 1)
            if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
                return cls(latest=count)
            raise RepositoryError(f"{where}.latest.num_versions: a positive integer, not {count!r}")
        if kind == "specific" and set(body) == {"versions"}:
            versions = body["versions"]
            if (
                isinstance(versions, list)
                and versions
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in versions)
            ):
                return cls(latest=None, specific=frozenset(versions))
            raise RepositoryError(f"{where}.specific.versions: a list of positive integers, not {versions!r}")
        raise RepositoryError(f"{where}: unknown policy {kind!r} with {body!r}")

    def select(self, versions: Iterable[int]) -> list[int]:
        """The versions served, of those present, newest first."""
        present = sorted(set(versions), reverse=True)
        if self.latest is not None:
            return present[: self.latest]
        if self.specific is not None:
            return [v for v in present if v in self.specific]
        return present


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path  # the folder holding this version's model.json


@dataclass(frozen=True)
class RepositoryModel:
    name: str
    versions: dict[int, Path]  # every version present
    policy: VersionPolicy

    @property
    def served(self) -> list[ModelVersion]:
        """The versions the policy serves, newest first."""
        return [ModelVersion(self.name, v, self.versions[v]) for v in self.policy.select(self.versions)]


@dataclass(frozen=True)
class Repository:
    root: Path
    models: dict[str, RepositoryModel]  # by name, sorted
    problems: dict[str, str] = field(default_factory=dict)  # folder name -> why it is not a model

    def model(self, name: str) -> RepositoryModel | None:
        return self.models.get(name)


def check_name(name: str) -> str:
    """`name` if it can name a model; RepositoryError otherwise."""
    if not NAME.match(name) or name.endswith(IMAGE_SUFFIX):
        raise RepositoryError(
            f"{name!r} cannot name a model: letters, digits, '_', '-' and '.', at most 64, not starting "
            f"with '.' and not ending with {IMAGE_SUFFIX!r}"
        )
    return name


def scan(root: Path) -> Repository:
    """Every model in `root` with its versions and policy. RepositoryError when `root` is not a
    folder; a folder that is not a usable model is left out with its reason in `problems`."""
    if not root.is_dir():
        raise RepositoryError(f"YOLOR_MODEL_REPOSITORY: {root} is not a folder")
    models: dict[str, RepositoryModel] = {}
    problems: dict[str, str] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found = _model(folder)
        except RepositoryError as e:
            problems[folder.name] = str(e)
            continue
        if found is not None:
            models[found.name] = found
    return Repository(root, models, problems)


def _model(folder: Path) -> RepositoryModel | None:
    """The model in `folder`, None when it holds no model.json at all (not an attempt at a model)."""
    versions = {
        int(p.name): p
        for p in folder.iterdir()
        if p.is_dir() and p.name.isdigit() and int(p.name) >= 1 and (p / MANIFEST_NAME).is_file()
    }
    bare = (folder / MANIFEST_NAME).is_file()
    if not versions and not bare:
        return None
    check_name(folder.name)
    if bare and versions:
        raise RepositoryError(
            f"{folder.name}: both a model.json of its own (version 1) and version folders; keep one layout"
        )
    if bare:
        versions = {1: folder}
    return RepositoryModel(folder.name, versions, _policy(folder))


def _policy(folder: Path) -> VersionPolicy:
    config = folder / CONFIG_NAME
    if not config.is_file():
        return VersionPolicy()
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise RepositoryError(f"{folder.name}/{CONFIG_NAME}: {e}") from None
    if not isinstance(data, dict) or set(data) - {"version_policy"}:
        raise RepositoryError(f"{folder.name}/{CONFIG_NAME}: an object with version_policy only")
    if "version_policy" not in data:
        return VersionPolicy()
    return VersionPolicy.parse(data["version_policy"], f"{folder.name}/{CONFIG_NAME}: version_policy")


def startup(settings: Settings) -> tuple[list[ModelVersion], str, dict[str, str]]:
    """What the server loads at start-up: (models with their versions, the default model's name, the
    repository's folders that are not usable models, with why). `YOLOR_MODEL_DIR` alone: one model,
    version 1, named `YOLOR_V2_MODEL_NAME`. A repository: `YOLOR_MODELS` (all when empty), each at
    the versions its policy serves. RepositoryError when a model asked for is not there (or has
    nothing to serve), or the repository has no model."""
    if settings.model_repository is None:
        name = settings.v2_model_name
        return [ModelVersion(name, 1, settings.model_dir)], name, {}
    repository = scan(settings.model_repository)
    names = settings.models or list(repository.models)
    if not names:
        if (repository.root / MANIFEST_NAME).is_file():
            raise RepositoryError(
                f"YOLOR_MODEL_REPOSITORY: {repository.root} is one model folder, not a repository: serve "
                f"it with YOLOR_MODEL_DIR, or move it into {repository.root}/<name>/"
            )
        raise RepositoryError(f"YOLOR_MODEL_REPOSITORY: no model in {repository.root}{_why(repository)}")
    chosen = []
    for name in names:
        model = repository.model(name)
        if model is None:
            reason = repository.problems.get(name, "no such folder with a model.json")
            raise RepositoryError(f"YOLOR_MODELS: {name!r} is not a model of {repository.root}: {reason}")
        if not model.served:
            raise RepositoryError(
                f"{name}: its version policy serves none of its versions {sorted(model.versions)}"
            )
        chosen += model.served
    return chosen, settings.default_model or names[0], repository.problems


def _why(repository: Repository) -> str:
    return "".join(f"; {name}: {reason}" for name, reason in repository.problems.items())
