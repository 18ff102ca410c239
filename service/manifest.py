"""The model manifest (`model.json`): what export writes and the server trusts.

It describes the exported graph (input, head, output layout), the model (arch, classes, strides,
anchors), where it came from (checkpoint sha256, versions) and how it was validated. The server reads
it, checks it against the backend it loads, and refuses what does not fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.processing.heads import Head, head_layout

MANIFEST_FORMAT = "yolor-serving/model/1"
MANIFEST_NAME = "model.json"


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    name: str = "images"
    dtype: Literal["float32"] = "float32"
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["RGB"] = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    letterbox_pad: int = 114


class OutputSpec(_Strict):
    name: str
    shape: list[int | str]  # "batch" for the dynamic axis
    columns: list[str]


class Artifact(_Strict):
    file: str
    sha256: str
    bytes: int = Field(ge=0)
    precision: Literal["fp32", "fp16", "int8"]


class ModelManifest(_Strict):
    format: Literal["yolor-serving/model/1"] = "yolor-serving/model/1"
    arch: str
    branch: Literal["main", "paper"]
    nc: int = Field(ge=1)
    class_names: list[str]
    depth: float = 1.0
    width: float = 1.0
    input_size: int = Field(ge=32)
    strides: list[int]
    anchors: list[list[list[float]]]
    head: Head
    top_k: int | None = Field(default=None, ge=1)
    input: InputSpec = InputSpec()
    output: OutputSpec
    max_batch: int = Field(ge=1)
    artifacts: dict[str, Artifact]
    source: dict[str, Any] = {}
    versions: dict[str, Any] = {}
    exported_at: str = ""
    validation: dict[str, Any] = {}

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if len(self.class_names) != self.nc:
            raise ValueError(f"{len(self.class_names)} class names for nc={self.nc}")
        if self.input_size % max(self.strides):
            raise ValueError(f"input_size {self.input_size} is not a multiple of stride {max(self.strides)}")
        layout = head_layout(self.head)
        if self.head == "topk" and self.top_k is None:
            raise ValueError("the topk head needs top_k")
        if not _fits(self.output.shape[1:], layout.image_shape(self.nc, self.top_k)):
            raise ValueError(
                f"{self.head} head output shape must be [batch, *{layout.image_shape(self.nc, self.top_k)}]"
                f" (None: any), got {self.output.shape}"
            )
        if self.output.columns != layout.columns(self.class_names):
            raise ValueError(f"{self.head} head columns must be {layout.columns(self.class_names)}")
        if "onnx" not in self.artifacts:
            raise ValueError("manifest lists no 'onnx' artifact")
        return self

    @property
    def image_output_shape(self) -> tuple[int | None, ...]:
        """One image's output: the output shape without its batch axis (None: a named, variable axis)."""
        return tuple(d if isinstance(d, int) else None for d in self.output.shape[1:])

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    def write(self, model_dir: str | Path) -> Path:
        """`model_dir/model.json`, the one way a manifest is written (export, tests, benchmarks)."""
        path = Path(model_dir) / MANIFEST_NAME
        path.write_text(self.to_json())
        return path


def _fits(shape: list[int | str], expected: tuple[int | None, ...]) -> bool:
    """Whether a manifest shape (named axes are strings) matches `expected` (None: any size)."""
    return len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected, strict=True)
    )


def load_manifest(model_dir: str | Path) -> ModelManifest:
    """Read and validate `model_dir/model.json`."""
    path = Path(model_dir) / MANIFEST_NAME
    try:
        return ModelManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {Path(model_dir)}: export the model first") from None
    except ValidationError as e:
        problems = []  # one line: pydantic's own report spans lines and links its docs
        for err in e.errors(include_url=False, include_input=False):
            where = ".".join(map(str, err["loc"])) or MANIFEST_NAME
            problems.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
        raise ManifestError(f"{path}: invalid manifest: {'; '.join(problems)}") from None
