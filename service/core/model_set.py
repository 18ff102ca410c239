"""The models a server holds, by name and version, and the one a request that names none gets.

One model folder (`YOLOR_MODEL_DIR`) is one model, version 1, named `YOLOR_V2_MODEL_NAME`; a model
repository (service.core.repository) gives several, each with the versions its policy serves.
A request names a model (or gets the default) and a version (or gets the newest served); it takes
its model once, when it starts, so a version replaced or unloaded meanwhile finishes its requests
(service.core.model.LoadedModel.retire).
"""

from __future__ import annotations

from collections.abc import Iterator

from service.core.errors import UnknownModel
from service.core.model import LoadedModel


class ModelSet:
    def __init__(self, default: str | None = None) -> None:
        self.default = default  # the model a request that names none gets
        self._models: dict[str, dict[int, LoadedModel]] = {}

    def __iter__(self) -> Iterator[LoadedModel]:
        """Every model held, by name, newest version first."""
        for name in self.names():
            yield from self.held(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        """The versions of `name` held, newest first ([] when none)."""
        return sorted(self._models.get(name, {}), reverse=True)

    def held(self, name: str) -> list[LoadedModel]:
        """The versions of `name` held, newest first ([] when none)."""
        versions = self._models.get(name, {})
        return [versions[v] for v in sorted(versions, reverse=True)]

    def listing(self) -> str:
        """What is held, for messages: `big (1), small (2, 1)`."""
        return ", ".join(f"{n} ({', '.join(map(str, self.versions(n)))})" for n in self.names()) or "none"

    def put(self, model: LoadedModel) -> None:
        """Hold `model` under its name and version, in place of the one held there (one assignment: a
        request takes either; the caller retires the one replaced)."""
        self._models.setdefault(model.name, {})[model.version] = model

    def remove(self, name: str, version: int) -> None:
        """Stop holding `name` at `version` (the caller retires it)."""
        versions = self._models.get(name, {})
        versions.pop(version, None)
        if not versions:
            self._models.pop(name, None)

    def find(self, name: str | None = None, version: int | None = None) -> LoadedModel | None:
        name = self.default if name is None else name
        versions = self._models.get(name or "", {})
        if version is None:
            return versions[max(versions)] if versions else None
        return versions.get(version)

    def get(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        """The model `name` (default: the default model) at `version` (default: its newest);
        UnknownModel (404) saying which models there are."""
        model = self.find(name, version)
        if model is not None:
            return model
        name = self.default if name is None else name
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        if name in self._models:
            raise UnknownModel(
                f"{what} is not loaded; versions of {name!r}: {', '.join(map(str, self.versions(name)))}"
            )
        raise UnknownModel(f"{what} is not loaded; models: {self.listing()}")
