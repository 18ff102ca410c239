"""A running server as the engine, over HTTP (httpx): `GET /model` once for the class names, then
`POST /detect` per image (multipart field `images`) and `POST /detect/video` per clip, whose NDJSON
lines are read as they stream.

A 503 (overloaded, not ready, shutting down) is retried after its Retry-After, as is a connection
that fails (the server restarting), up to `attempts` tries in all; any other refusal (4xx, 500,
504) is the item's error, with the server's code and message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from predict.engine import Filters, ItemError, Record, StartError

log = logging.getLogger("yolor")

ATTEMPTS = 5
DEFAULT_WAIT_S, MAX_WAIT_S = 1.0, 60.0  # when a 503 names no Retry-After; the longest wait honoured
TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # a long clip's stream may pause between batches


def retry_after(response: httpx.Response) -> float:
    """Seconds a 503 asks to wait (its Retry-After in seconds; a date or none: DEFAULT_WAIT_S)."""
    try:
        return min(MAX_WAIT_S, max(0.0, float(response.headers.get("retry-after", DEFAULT_WAIT_S))))
    except ValueError:
        return DEFAULT_WAIT_S


def _refusal(response: httpx.Response) -> ItemError:
    """The server's error body (`{"error": {"code", "message"}}`) as an ItemError."""
    try:
        error = response.json()["error"]
        return ItemError(str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ItemError(f"http_{response.status_code}", response.text[:200] or response.reason_phrase)


async def send_retrying(request: Callable[[], Awaitable[httpx.Response]], attempts: int) -> httpx.Response:
    """`request()`'s response, retried after a 503's Retry-After or a failed connection, `attempts`
    tries in all (the last 503 is returned; the last failed connection is an ItemError)."""
    for attempt in range(1, attempts + 1):
        last = attempt == attempts
        try:
            response = await request()
        except httpx.TransportError as e:
            if last:
                raise ItemError("unreachable", f"{type(e).__name__}: {e}") from None
            await asyncio.sleep(DEFAULT_WAIT_S)
            continue
        if response.status_code != 503 or last:
            return response
        await response.aread()
        wait = retry_after(response)
        log.debug("503 (%s); retrying in %.1f s", _refusal(response).code, wait)
        await response.aclose()
        await asyncio.sleep(wait)
    raise ItemError("unreachable", "no attempt made")


class RemoteEngine:
    def __init__(
        self, client: httpx.AsyncClient, model: dict[str, Any], query: dict[str, str], attempts: int
    ):
        self.client, self.query, self.attempts = client, query, attempts
        self.class_names: list[str] = list(model["class_names"])
        self.model_version = (
            f"{model['arch']} {model.get('backend', '')} {model.get('precision', '')}".strip()
        )
        self.max_batch = int(model.get("max_batch_size") or 1)

    @classmethod
    async def start(
        cls,
        url: str,
        filters: Filters,
        *,
        api_key: str | None = None,
        connections: int = 16,
        attempts: int = ATTEMPTS,
    ) -> RemoteEngine:
        """Connected to the server at `url`, its model known. Raises StartError."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        client = httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT, limits=limits)
        query = {k: ",".join(v) if isinstance(v, tuple) else str(v) for k, v in filters.given().items()}
        try:
            response = await send_retrying(lambda: client.get("/model"), attempts)
            if response.status_code != 200:
                raise StartError(
                    f"GET {url}/model answered {response.status_code}: {_refusal(response).message}"
                )
            model = response.json()
            unknown = _unknown_classes(filters.classes or (), model["class_names"])
            if unknown:
                raise StartError(f"the served model has no class {', '.join(unknown)}")
        except ItemError as e:
            await client.aclose()
            raise StartError(f"no answer from {url}: {e.message}") from None
        except BaseException:
            await client.aclose()
            raise
        return cls(client, model, query, attempts)

    async def _send(self, request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        return await send_retrying(request, self.attempts)

    async def image(self, data: bytes) -> Record:
        files = {"images": ("image", data, "application/octet-stream")}
        response = await self._send(lambda: self.client.post("/detect", params=self.query, files=files))
        if response.status_code != 200:
            raise _refusal(response)
        result = response.json()["results"][0]
        return {"width": result["width"], "height": result["height"], "detections": result["detections"]}

    async def video(self, path: Path, stride: int, track: bool = False) -> AsyncIterator[Record]:
        async with AsyncExitStack() as stack:

            async def post() -> httpx.Response:
                try:
                    file = stack.enter_context(path.open("rb"))  # reopened per attempt
                except OSError as e:
                    raise ItemError("unreadable", str(e)) from None
                files = {"video": (path.name, file, "application/octet-stream")}
                params = {**self.query, "vid_stride": str(stride), **({"track": "true"} if track else {})}
                request = self.client.build_request("POST", "/detect/video", params=params, files=files)
                response = await self.client.send(request, stream=True)
                stack.push_async_callback(response.aclose)
                return response

            response = await self._send(post)
            if response.status_code != 200:
                await response.aread()
                raise _refusal(response)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                record = json.loads(line)
                if "error" in record:
                    raise ItemError(str(record["error"]["code"]), str(record["error"]["message"]))
                yield record
                if "summary" in record:
                    return
            raise ItemError("incomplete", "the stream ended before its summary line")

    async def close(self) -> None:
        await self.client.aclose()


def _unknown_classes(given: tuple[str, ...], names: list[str]) -> list[str]:
    """The ids or names in `given` (each may be comma-separated) that the model does not have."""
    parts = [p.strip() for value in given for p in value.split(",") if p.strip()]
    return [p for p in parts if p not in names and not (p.isdigit() and int(p) < len(names))]
