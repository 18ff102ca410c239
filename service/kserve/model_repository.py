"""Triton's model repository extension, whatever the transport (HTTP `/v2/repository/...` or gRPC
`RepositoryIndex` / `RepositoryModelLoad` / `RepositoryModelUnload`): the index of what the
repository holds and in what state, and load / unload through `service.core.reload` (no failed
request while a model loads, is replaced or unloads).

The index has an entry per version: `READY` (loaded), `LOADING`, or `UNAVAILABLE` with the reason
(`unloaded`; `not served by its version policy`; a folder that is not a usable model, with why).
Load takes no parameters of Triton's that override a model's config or files: the repository is
the source of truth (a request with them is a 422, not silently ignored); unload's
`unload_dependents` is accepted (there are no ensembles).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.core.errors import InvalidParameter
from service.core.reload import Switched
from service.core.repository import RepositoryError, scan
from service.core.state import ServiceState

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})


def index(state: ServiceState, *, ready: bool = False) -> list[dict[str, str]]:
    """Every model and version of the repository (or the server's one model folder) and the loaded
    ones, by name then newest version first; `ready`: the loaded ones only."""
    entries: dict[tuple[str, int], dict[str, str]] = {}
    problems: dict[str, str] = {}
    root = state.settings.model_repository
    if root is not None:
        try:
            repository = scan(root)
        except RepositoryError as e:
            problems = {"": str(e)}
        else:
            problems = dict(repository.problems)
            for name, model in repository.models.items():
                served = {m.version for m in model.served}
                for version in model.versions:
                    reason = "unloaded" if version in served else "not served by its version policy"
                    entries[name, version] = _entry(name, version, UNAVAILABLE, reason)
    loading = state.reloader.loading if state.reloader is not None else set()
    for (name, _), entry in entries.items():
        if name in loading:
            entry.update(state=LOADING, reason="")
    for loaded in state.models:
        entries[loaded.name, loaded.version] = _entry(loaded.name, loaded.version, READY)
    ordered = [entries[key] for key in sorted(entries, key=lambda k: (k[0], -k[1]))]
    if ready:
        return [e for e in ordered if e["state"] == READY]
    broken = [
        {"name": name, "version": "", "state": UNAVAILABLE, "reason": why} for name, why in problems.items()
    ]
    return ordered + broken


def _entry(name: str, version: int, state: str, reason: str = "") -> dict[str, str]:
    return {"name": name, "version": str(version), "state": state, "reason": reason}


async def load(state: ServiceState, name: str, parameters: Mapping[str, Any]) -> Switched:
    if parameters:
        raise InvalidParameter(
            f"load takes no parameters ({', '.join(sorted(parameters))} given): the model repository's "
            f"folder is what loads; change it there, then load {name!r}"
        )
    return await state.reloads.load(name)


async def unload(state: ServiceState, name: str, parameters: Mapping[str, Any]) -> Switched:
    unknown = set(parameters) - UNLOAD_PARAMETERS
    if unknown:
        raise InvalidParameter(f"unload takes only {sorted(UNLOAD_PARAMETERS)}; got {sorted(unknown)}")
    return await state.reloads.unload(name)
