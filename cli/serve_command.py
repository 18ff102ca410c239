"""`yolor serve`: the detection service under uvicorn (needs the `serve` extra, never torch).

Options given on the command line become `YOLOR_*` environment variables, so every uvicorn worker
process builds the same `Settings` through the app factory; any setting not given here can be set
through its `YOLOR_*` variable (docs/configuration.md lists them all).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cli.errors import CommandError, settings_problems

FACTORY = "service.http.app:app_factory"
BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


def _settings_env(args: argparse.Namespace) -> dict[str, str]:
    """YOLOR_* variables for the options given on the command line (None: not given)."""
    given = {
        "YOLOR_MODEL_DIR": args.model,
        "YOLOR_MODEL_REPOSITORY": args.model_repository,
        "YOLOR_HOST": args.host,
        "YOLOR_PORT": args.port,
        "YOLOR_BACKEND": args.backend,
        "YOLOR_DEVICE": args.device,
        "YOLOR_WORKERS": args.workers,
    }
    return {name: str(value) for name, value in given.items() if value is not None}


def _cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.core.repository import startup
    from service.manifest import MANIFEST_NAME, load_manifest
    from service.settings import Settings

    os.environ.update(_settings_env(args))
    try:
        settings = Settings()
    except ValidationError as e:
        raise CommandError(f"invalid settings: {settings_problems(e)}") from None
    models, _, _ = startup(settings)  # RepositoryError now, not a server that never gets ready
    for model in models:
        if not (model.path / MANIFEST_NAME).is_file():
            raise CommandError(f"no model at {model.path} (no {MANIFEST_NAME}): run `yolor export` first")
        load_manifest(model.path)  # ManifestError now, likewise

    import uvicorn

    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # keep the logging configured above (text or JSON) for uvicorn's loggers too
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the detection service (uvicorn)",
        description="Serve a model directory (model.json + artifacts). Every setting is also read from "
        "its YOLOR_* environment variable; options given here win.",
    )
    p.add_argument("--model", type=Path, default=None, help="model directory (default: service/demo_model)")
    p.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="a folder of models (<name>/<version>/model.json), served instead of --model",
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="runtime (default auto)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes (default 1)")
    p.set_defaults(func=_cmd_serve)
