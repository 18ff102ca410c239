"""Service settings: one class, read from `YOLOR_*` environment variables (or passed explicitly).

Nothing is read at import time: `Settings()` reads the environment when called (the ASGI factory
and `yolor serve` do), tests pass values directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.host import host_cpu_count

# The bundled demo model is package data, so an installed (non-editable) package finds it too.
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"


# Not Settings fields: the TensorRT builder's timing cache location, and the variables of
# `yolor weights` and deploy/prepare-model.sh (the deployment's model preparation step).
OTHER_VARIABLES = frozenset(
    {"YOLOR_CACHE_DIR", "YOLOR_WEIGHTS_BASE_URL", "YOLOR_EXPORT_IMG_SIZE", "YOLOR_EXPORT_MAX_BATCH"}
)


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """YOLOR_* environment variables that name no setting (a typo would otherwise pass unnoticed)."""
    known = {f"YOLOR_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    names = os.environ if environ is None else environ
    return sorted(name for name in names if name.startswith("YOLOR_") and name not in known)


Precision = Literal["auto", "fp32", "fp16", "int8"]


class Settings(BaseSettings):
    """Everything configurable; each field is also the env var `YOLOR_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix="YOLOR_", frozen=True, extra="forbid")

    model_dir: Path = Field(default=DEMO_MODEL_DIR, description="directory with model.json and artifacts")
    model_repository: Path | None = Field(
        default=None,
        description="a folder of models, <name>/<version>/model.json or <name>/model.json; "
        "when set, served instead of model_dir",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="the repository's models loaded at start-up; empty: all"
    )
    default_model: str | None = Field(
        default=None,
        description="the model of requests that name none; default: the first of models, else the "
        "repository's first by name",
    )
    load_on_demand: bool = Field(
        default=False,
        description="a request naming a repository model that is not loaded loads it first (it then may "
        "be unloaded again, least recently used first, to keep within max_models / model_memory_mb)",
    )
    max_models: int | None = Field(
        default=None,
        ge=1,
        description="most model versions loaded at once (models loaded on demand give way)",
    )
    model_memory_mb: int | None = Field(
        default=None,
        ge=1,
        description="most resident memory the loaded models take, each measured as it loads (models "
        "loaded on demand give way)",
    )
    backend: Literal["auto", "onnxruntime", "tensorrt", "torch"] = "auto"
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda, cuda:N"
    )
    precision: Precision = Field(
        default="auto",
        description="auto: fp16 on a GPU when the model has it, else fp32; int8 only when asked for",
    )
    max_batch_size: int | None = Field(default=None, ge=1, le=1024, description="default: manifest max_batch")
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000, description="longest wait to fill a batch")
    queue_size: int = Field(default=256, ge=1, le=100_000, description="images waiting for inference")
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="per-request deadline")
    watchdog_s: float = Field(
        default=60.0, gt=0, le=86_400, description="a batch in the backend longer than this: not ready"
    )
    max_body_bytes: int = Field(default=32 << 20, ge=1024, le=1 << 30)
    max_images_per_request: int = Field(default=16, ge=1, le=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1, le=1 << 30, description="width * height")
    max_tiles_per_image: int = Field(
        default=64, ge=1, le=4096, description="sliced inference (`tile`): most windows per image"
    )
    max_video_bytes: int = Field(
        default=512 << 20, ge=1024, le=1 << 36, description="POST /detect/video: the largest upload"
    )
    max_video_frames: int = Field(
        default=108_000, ge=1, le=100_000_000, description="frames a clip may have (read, not only processed)"
    )
    max_video_seconds: float = Field(default=3600.0, gt=0, le=86_400, description="a clip's longest duration")
    video_containers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["mp4", "mov", "matroska", "webm", "avi", "mpegts"],
        description="FFmpeg container names allowed; empty: any",
    )
    video_codecs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"],
        description="FFmpeg video codec names allowed; empty: any",
    )
    max_streams: int = Field(
        default=16, ge=0, le=1024, description="live streams open at once (POST /streams)"
    )
    stream_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="hosts, *.wildcards and networks streams and their webhooks may connect to; "
        "* is any host with a public address (private ones only when listed)",
    )
    stream_root: Path | None = Field(
        default=None, description="folder of the files a stream may play; unset: none"
    )
    stream_open_timeout_s: float = Field(default=10.0, gt=0, le=300, description="opening a stream's source")
    stream_read_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="a source silent this long is reopened (with backoff)"
    )
    state_dir: Path | None = Field(
        default=None, description="where stream definitions are kept across restarts; unset: not kept"
    )
    jpeg_reduced_decode: bool = Field(
        default=True,
        description="decode JPEGs 4x+ larger than the input at 1/2, 1/4 or 1/8 scale, keeping 2x the input",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="comma-separated or JSON list; empty: no auth"
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="keys for /admin (model reload); empty: /admin refused"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    tracing: bool | None = Field(
        default=None,
        description="OpenTelemetry traces (OTEL_* variables); unset: on when an OTLP endpoint is set",
    )
    onnx_parallel_runs: int = Field(
        default=0, ge=0, le=64, description="CPU: each batch split over this many concurrent runs; 0: auto"
    )
    onnx_intra_op_threads: int = Field(
        default=0, ge=0, le=1024, description="threads per run; 0: the usable CPUs shared between the runs"
    )
    preprocess_threads: int = Field(default=0, ge=0, le=256, description="decode/letterbox threads; 0: auto")
    warmup: bool = True
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="Retry-After of 503 answers")
    grpc_port: int | None = Field(
        default=None, ge=0, le=65535, description="KServe v2 gRPC port (off when unset; 0: any free port)"
    )
    v2_model_name: str = Field(
        default="yolor", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="KServe v2 model name"
    )
    engine_dir: Path | None = Field(default=None, description="TensorRT engine location; default model_dir")
    checkpoint: Path | None = Field(default=None, description="checkpoint for the torch backend")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)

    @field_validator(
        "api_keys",
        "admin_keys",
        "cors_origins",
        "video_containers",
        "video_codecs",
        "stream_allowed_hosts",
        "models",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _keys_not_blank(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if any(len(k.get_secret_value()) < 8 for k in keys):
            raise ValueError("API keys must be at least 8 characters long")
        return keys

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.queue_size < self.max_images_per_request:
            raise ValueError(
                f"queue_size ({self.queue_size}) must hold one full request "
                f"(max_images_per_request={self.max_images_per_request})"
            )
        if self.max_batch_size is not None and self.queue_size < self.max_batch_size:
            raise ValueError(f"queue_size ({self.queue_size}) < max_batch_size ({self.max_batch_size})")
        if self.max_delay_ms / 1000 >= self.request_timeout_s:
            raise ValueError("max_delay_ms must be well below request_timeout_s")
        if (self.models or self.default_model or self.load_on_demand) and self.model_repository is None:
            raise ValueError(
                "models, default_model and load_on_demand choose from model_repository: set it too"
            )
        if self.default_model and self.models and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of models {self.models}")
        if self.backend in ("tensorrt", "torch") and self.device == "cpu":
            raise ValueError(f"backend {self.backend!r} needs a CUDA device, not device='cpu'")
        return self

    @property
    def parallel_runs(self) -> int:
        """Concurrent ONNX Runtime runs per batch on the CPU: auto is 2 with 2 or more usable CPUs.

        ONNX Runtime's intra-op threads scale poorly and stall when a core is busy decoding, so two
        single-threaded runs of half a batch each answer more images/s than one run on two threads
        (measured on 2 cores: docs/benchmarks.md, "What changed the served numbers").
        """
        return self.onnx_parallel_runs or (2 if host_cpu_count() >= 2 else 1)

    @property
    def intra_op_threads(self) -> int:
        return self.onnx_intra_op_threads or max(1, host_cpu_count() // self.parallel_runs)

    @property
    def preprocess_workers(self) -> int:
        return self.preprocess_threads or min(8, host_cpu_count() + 2)
