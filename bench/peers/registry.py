"""The peers `yolor bench peers` knows: what to install for each and how its app is run and called.

Each peer's app (`apps/<name>_app.py`) serves `POST /detect` on 127.0.0.1:PEER_PORT from the peer's
venv; the request is the multipart upload `/detect` takes unless the peer documents another way in
(`body`: a stdlib-only module in `apps/` with `body(jpeg) -> (content, content type)` and
`answers(content) -> [answer]`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APPS = Path(__file__).parent / "apps"

Encode = Callable[[bytes], tuple[bytes, str]]


@dataclass(frozen=True)
class Peer:
    name: str
    title: str  # as the tables name it, with its version
    requirements: tuple[str, ...]  # pip lines for its venv, besides the work's own (venvs.WORK_PACKAGES)
    path: str = "/detect"
    body: str | None = None  # module under bench.peers.apps with body() and answers()

    @property
    def app(self) -> Path:
        return APPS / f"{self.name}_app.py"

    @property
    def encode(self) -> Encode:
        if self.body is None:
            from bench.load import multipart_body  # aiohttp: not for the command line's parser

            return multipart_body
        encode: Encode = importlib.import_module(f"bench.peers.apps.{self.body}").body
        return encode

    def answers(self, content: bytes) -> list[dict[str, Any]]:
        """The answers (one per image sent) in a response body."""
        if self.body is None:
            import json

            return [json.loads(content)]
        read: Callable[[bytes], list[dict[str, Any]]]
        read = importlib.import_module(f"bench.peers.apps.{self.body}").answers
        return read(content)


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("litserve", "LitServe 0.2.19", ("litserve==0.2.19", "python-multipart==0.0.34")),
        Peer("ray_serve", "Ray Serve 2.60.0", ("ray[serve]==2.60.0", "python-multipart==0.0.34")),
        Peer("bentoml", "BentoML 1.4.40", ("bentoml==1.4.40",)),
        Peer(
            "mlserver",
            "MLServer 1.7.1",
            ("mlserver==1.7.1", "uvloop<0.22"),  # uvloop 0.22+ breaks its workers (SeldonIO/MLServer#2286)
            path="/v2/models/yolor/infer",
            body="mlserver_body",
        ),
    )
}
DEFAULT_PEERS = ("litserve", "ray_serve", "bentoml", "mlserver")
