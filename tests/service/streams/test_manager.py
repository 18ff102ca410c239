"""The stream manager at start-up: streams kept from the last run are reopened, and one whose camera
is not reachable yet (its name does not resolve, its host refuses) is retried, not dropped: a
camera may reboot with the server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from service.core.auth import ApiKeys
from service.core.errors import InvalidParameter
from service.core.metrics import Metrics
from service.core.state import ServiceState
from service.settings import Settings
from service.streams.manager import StreamManager
from service.streams.reader import SourceState
from service.streams.sources import SourcePolicy
from service.streams.store import FORMAT, StreamStore

pytest.importorskip("av")
pytestmark = pytest.mark.anyio


def resolver(host: str) -> list[str]:
    if host == "cam.not-yet.example":
        raise InvalidParameter(f"the source's host {host!r} does not resolve: Name or service not known")
    return ["93.184.216.34"]


@pytest.mark.slow
async def test_a_restored_stream_whose_camera_is_not_reachable_yet_is_kept_and_retried(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    stored = {
        "format": FORMAT,
        "streams": [{"id": "cam1", "spec": {"source": "rtsp://cam.not-yet.example/live"}}],
    }
    (state_dir / "streams.json").write_text(json.dumps(stored))
    settings = Settings(state_dir=state_dir, stream_open_timeout_s=1)
    state = ServiceState(settings=settings, metrics=Metrics(), api_keys=ApiKeys([]), admin_keys=ApiKeys([]))
    manager = StreamManager(settings, state, policy=SourcePolicy(["*"], None, resolver=resolver))
    await manager.start()
    try:
        stream = manager.get("cam1")
        give_up = time.monotonic() + 20
        while not stream.reader.stats.error:
            assert time.monotonic() < give_up
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # more than 3 failed openings (backoff 0.5 s, then 1 s, ...)
        assert stream.state is SourceState.STARTING  # still trying: a new stream would be failed now
        assert "does not resolve" in (stream.reader.stats.error or "")
        assert [s["id"] for s in json.loads((state_dir / "streams.json").read_text())["streams"]] == ["cam1"]
        assert StreamStore(state_dir).load()["cam1"].source == "rtsp://cam.not-yet.example/live"
    finally:
        await manager.close()


async def test_a_new_stream_whose_name_does_not_resolve_is_refused(tmp_path: Path) -> None:
    from service.streams.spec import StreamSpec

    settings = Settings(state_dir=tmp_path / "state")
    state = ServiceState(settings=settings, metrics=Metrics(), api_keys=ApiKeys([]), admin_keys=ApiKeys([]))
    manager = StreamManager(settings, state, policy=SourcePolicy(["*"], None, resolver=resolver))
    with pytest.raises(InvalidParameter, match="does not resolve"):
        await manager.create(StreamSpec(source="rtsp://cam.not-yet.example/live"))
    assert manager.streams == {}
