"""Which sources a stream may open: hosts against YOLOR_STREAM_ALLOWED_HOSTS (with every resolved
address checked), files under YOLOR_STREAM_ROOT."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.errors import InvalidParameter, SourceNotAllowed
from service.streams.sources import SourcePolicy

ADDRESSES = {
    "cam.example.com": ["93.184.216.34"],
    "nvr.local": ["192.168.1.20"],
    "rebound.example.com": ["93.184.216.35", "127.0.0.1"],  # one public, one loopback
    "v6.example.com": ["2606:2800:220:1::1"],
    "127.0.0.1": ["127.0.0.1"],
    "10.1.2.3": ["10.1.2.3"],
    "169.254.169.254": ["169.254.169.254"],
}


def policy(*hosts: str, root: Path | None = None) -> SourcePolicy:
    return SourcePolicy(hosts, root, resolver=lambda host: ADDRESSES[host])


def test_any_public_host_by_default_but_no_private_or_reserved_address() -> None:
    p = policy("*")
    assert p.check("rtsp://user:pw@cam.example.com:554/live").live
    assert p.check("https://v6.example.com/cam.m3u8").host == "v6.example.com"
    for url in (
        "rtsp://nvr.local/1",
        "http://127.0.0.1:8080/mjpeg",
        "http://169.254.169.254/latest",
        "rtsp://rebound.example.com/x",
        "rtsp://10.1.2.3/x",
    ):
        with pytest.raises(SourceNotAllowed, match="private or reserved"):
            p.check(url)


def test_listed_names_and_networks_allow_private_addresses_and_nothing_else() -> None:
    p = policy("nvr.local", "10.0.0.0/8")
    assert p.check("rtsp://nvr.local/1").host == "nvr.local"
    assert p.check("rtsp://10.1.2.3/x").host == "10.1.2.3"
    with pytest.raises(SourceNotAllowed, match="not in YOLOR_STREAM_ALLOWED_HOSTS"):
        p.check("rtsp://cam.example.com/x")  # public, but the list has no "*"
    with pytest.raises(SourceNotAllowed):
        p.check("http://127.0.0.1/x")


def test_wildcard_names() -> None:
    p = policy("*.example.com")
    assert p.check("rtsp://cam.example.com/a")
    assert p.check("rtsp://rebound.example.com/a")  # named: its addresses are the operator's choice
    with pytest.raises(SourceNotAllowed):
        p.check("rtsp://nvr.local/a")


def test_malformed_and_unsupported_sources() -> None:
    p = policy("*")
    with pytest.raises(InvalidParameter, match="not supported"):
        p.check("ftp://cam.example.com/a")
    with pytest.raises(InvalidParameter, match="no host"):
        p.check("rtsp:///path")


def test_credentials_are_hidden_in_the_public_url() -> None:
    source = policy("*").check("rtsp://admin:secret@cam.example.com:8554/live?x=1")
    assert source.public() == "rtsp://***@cam.example.com:8554/live?x=1"
    assert "secret" in source.url


def test_files_only_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    p = policy("*", root=root)
    source = p.check("sub/a.mp4")
    assert (source.url, source.live) == (str((root / "sub" / "a.mp4").resolve()), False)
    assert p.check(f"file://{root / 'sub' / 'a.mp4'}").url == source.url
    for outside in ("../secret.mp4", "link.mp4", f"file://{tmp_path / 'secret.mp4'}"):
        with pytest.raises(SourceNotAllowed, match="outside"):
            p.check(outside)
    with pytest.raises(InvalidParameter, match="no file"):
        p.check("sub/missing.mp4")
    with pytest.raises(SourceNotAllowed, match="YOLOR_STREAM_ROOT"):
        policy("*").check("sub/a.mp4")
