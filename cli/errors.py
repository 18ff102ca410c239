"""Which failures are the user's (exit status 2, one line, no traceback) and which are bugs.

The library's own exception classes for refused input are named here, by module and class name, so
that checking an exception imports nothing (the `serve` image has no torch, and `yolor.checkpoint`
imports it). Anything else propagates with its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class CommandError(Exception):
    """A user-facing failure raised by a command itself."""


USER_ERRORS = frozenset(
    {
        "cli.errors.CommandError",
        "yolor.checkpoint.CheckpointError",  # a file yolor cannot load, or one that does not fit the arch
        "yolor.archs.specs.UnknownArch",
        "service.manifest.ManifestError",  # a model folder without a usable model.json / artifacts
        "service.core.repository.RepositoryError",  # a model repository, or a model asked of it, unusable
        "service.backends.base.BackendError",  # a backend that cannot load or run here
        "service.backends.tensorrt_build.TensorRTUnavailable",
        "export.pipeline.ExportError",
        "export.validate.ValidationFailed",
        "export.download.DownloadError",
        "export.official_weights.UnknownWeights",
        "train.data.datasets.DatasetError",
        "train.trainer.TrainConfigError",
        "train.eval_model.EvaluationError",
        # the filesystem refusing a path the user gave
        "builtins.FileNotFoundError",
        "builtins.FileExistsError",
        "builtins.IsADirectoryError",
        "builtins.NotADirectoryError",
        "builtins.PermissionError",
    }
)


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is (a subclass of) one of USER_ERRORS."""
    return any(f"{cls.__module__}.{cls.__qualname__}" in USER_ERRORS for cls in type(error).__mro__)


def settings_problems(error: ValidationError) -> str:
    """pydantic's report in one line, each problem named by its setting and YOLOR_* variable (the values
    left out: one may be an API key)."""
    problems = []
    for e in error.errors(include_url=False, include_input=False):
        msg = str(e["msg"]).removeprefix("Value error, ")
        field = str(e["loc"][0]) if e["loc"] else None
        problems.append(f"{field} (YOLOR_{field.upper()}): {msg}" if field else msg)
    return "; ".join(problems)
