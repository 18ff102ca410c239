"""The body of MLServer's V2 (Open Inference Protocol) REST request for one JPEG, and the detections
out of its answer; stdlib only, for the client side of `yolor bench peers`.

Request: `POST /v2/models/yolor/infer`, `Content-Type: application/json`,
`{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
"parameters": {"content_type": "base64"}, "data": ["<base64 JPEG>"]}]}`.

Answer (200): `{"model_name": "yolor", "id": "...", "parameters": {...}, "outputs": [{"name": "answer",
"shape": [1, 1], "datatype": "BYTES", "parameters": {"content_type": "str"},
"data": ["<JSON of Work.answer(...)>"]}]}`.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def body(jpeg: bytes) -> tuple[bytes, str]:
    """One image as a V2 request with a base64 BYTES input: (body, content type)."""
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(jpeg).decode("ascii")],
            }
        ]
    }
    return json.dumps(request, separators=(",", ":")).encode(), "application/json"


def answers(answer_bytes: bytes) -> list[dict[str, Any]]:
    """The answer dicts (`width`, `height`, `detections`), one per image, out of a V2 response."""
    response = json.loads(answer_bytes)
    output = next(o for o in response["outputs"] if o["name"] == "answer")
    return [json.loads(item) for item in output["data"]]
