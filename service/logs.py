"""Process-wide logging for the server: plain text or one JSON object per line.

Called by the process entry points (`yolor serve`, the ASGI factory), never by `create_app`, so
tests and embedding applications keep their own logging.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The model (`name:version`) the current request or stream took: set by ServiceState.current in the
# task that serves it (each request has its own), so its log records, uvicorn's access line
# included, say which model answered.
MODEL: ContextVar[str | None] = ContextVar("yolor_model", default=None)
# The request's id (X-Request-ID, or the gRPC call's x-request-id), set where the request starts.
REQUEST_ID: ContextVar[str | None] = ContextVar("yolor_request_id", default=None)
# The trace and span ids (hex) of the request's server span while it is traced (service.tracing).
TRACE_IDS: ContextVar[tuple[str, str] | None] = ContextVar("yolor_trace_ids", default=None)
_GOOD_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def start_request(given: str | None) -> str:
    """The id of a request that starts now in this task: the one it brought (letters, digits and
    `._:/+=@-`, at most 128), else a new one (32 hex digits); its log records carry it."""
    request_id = given if given and _GOOD_ID.fullmatch(given) else uuid.uuid4().hex
    REQUEST_ID.set(request_id)
    return request_id


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ["request_id"], ["trace_id", "span_id"], ["model"],
    ["exception"]}` per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := REQUEST_ID.get()) is not None:
            entry["request_id"] = request_id
        if (trace_ids := TRACE_IDS.get()) is not None:
            entry["trace_id"], entry["span_id"] = trace_ids
        if (model := MODEL.get()) is not None:
            entry["model"] = model
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """One stderr handler on the root logger; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
