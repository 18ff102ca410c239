"""Stream definitions kept across restarts: one JSON file, `<YOLOR_STATE_DIR>/streams.json`, rewritten
whole on every change through a temporary file, fsync and rename, so a crash leaves the old file or
the new one, never half of one. It holds source URLs with their credentials and webhook secrets:
created readable by its owner only.

A file that does not parse is moved aside (`streams.json.corrupt-<time>`) and the server starts
without streams rather than not at all; an entry that no longer validates is skipped, both logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.streams.spec import StreamSpec

log = logging.getLogger(__name__)

FILE_NAME = "streams.json"
FORMAT = "yolor-serving/streams/1"


class StreamStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def load(self) -> dict[str, StreamSpec]:
        """Stream id -> definition, in the order they were created."""
        try:
            data: Any = json.loads(self.path.read_text())
            if data.get("format") != FORMAT or not isinstance(data.get("streams"), list):
                raise ValueError(f"not a {FORMAT} file")
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError, OSError) as e:
            aside = self.path.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
            log.error(
                "streams: %s is unreadable (%s); moved to %s, starting without streams", self.path, e, aside
            )
            self.path.replace(aside)
            return {}
        specs = {}
        for entry in data["streams"]:
            try:
                specs[str(entry["id"])] = StreamSpec.model_validate(entry["spec"])
            except (KeyError, TypeError, ValidationError) as e:
                log.error("streams: skipping an entry of %s that does not validate: %s", self.path, e)
        return specs

    def save(self, specs: dict[str, StreamSpec]) -> None:
        data = {
            "format": FORMAT,
            "streams": [
                {"id": i, "spec": s.model_dump(mode="json", exclude_defaults=True)} for i, s in specs.items()
            ],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
