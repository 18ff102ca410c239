"""Which sources a stream may open: a stream makes the server connect out, so what it may reach is
the operator's choice, not the client's.

- Network sources: `rtsp://`, `rtsps://`, `http://` and `https://` (MJPEG or HLS). The host must
  match `YOLOR_STREAM_ALLOWED_HOSTS`: hostnames (`cam1.example.com`, `*.cams.example.com`),
  addresses and networks (`10.20.0.0/16`), or `*` (the default: any host). Every address the host
  resolves to is checked, at creation and before every reopening (a name that later resolves
  elsewhere is refused then): private, loopback, link-local, multicast and reserved addresses are
  refused unless an entry other than `*` names the host or covers the address.
- Files: a path relative to `YOLOR_STREAM_ROOT` (or `file://` + an absolute path inside it), played
  in real time; refused when no root is set, or when it resolves outside the root (`..`, links).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from service.core.errors import InvalidParameter, SourceNotAllowed

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
ALLOWED = "YOLOR_STREAM_ALLOWED_HOSTS"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    """Every address `host` resolves to (an address resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InvalidParameter(f"the source's host {host!r} does not resolve: {e.strerror}") from None
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Source:
    url: str  # what FFmpeg opens: the URL, or the file's absolute path
    live: bool  # a camera (keep the newest frame) rather than a file (played in real time)
    host: str | None  # a network source's host, checked again before each reopening

    def public(self) -> str:
        """The URL without its credentials, for the API and the logs."""
        parts = urlsplit(self.url)
        if parts.password is None and parts.username is None:
            return self.url
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        return parts._replace(netloc=f"***@{netloc}").geturl()


class SourcePolicy:
    """`check(source)` -> the Source to open, or InvalidParameter (422: malformed) / SourceNotAllowed (403:
    not allowed here)."""

    def __init__(self, allowed_hosts: Sequence[str], root: Path | None, resolver: Resolve = resolve) -> None:
        self.root = root.resolve() if root is not None else None
        self._resolve = resolver
        self.any_host = "*" in allowed_hosts
        self.names: list[str] = []
        self.networks: list[Network] = []
        for entry in (e.strip() for e in allowed_hosts):
            if not entry or entry == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.append(entry.lower())

    def check(self, text: str, *, resolve: bool = True) -> Source:
        """`resolve` False: the host's addresses are left to the check before each opening (a stream
        reopened at start-up is kept while its camera's name does not resolve yet)."""
        parts = urlsplit(text)
        if parts.scheme in NETWORK_SCHEMES:
            if not parts.hostname:
                raise InvalidParameter(f"the source {text!r} has no host")
            if resolve:
                self.check_host(parts.hostname)
            return Source(text, live=True, host=parts.hostname)
        if parts.scheme == "file":
            return self._file(parts.path)
        if parts.scheme or "://" in text:
            allowed = ", ".join(f"{s}://" for s in NETWORK_SCHEMES)
            raise InvalidParameter(f"source scheme {parts.scheme!r} is not supported ({allowed} or a file)")
        return self._file(text)

    def check_host(self, host: str) -> None:
        """SourceNotAllowed unless `host` and every address it resolves to are allowed."""
        host = host.lower().strip("[]")
        named = any(fnmatch.fnmatchcase(host, pattern) for pattern in self.names)
        if not (named or self.any_host or self.networks):
            raise SourceNotAllowed(f"source host {host!r} is not in YOLOR_STREAM_ALLOWED_HOSTS")
        for text in self._resolve(host):
            address = ipaddress.ip_address(text.split("%")[0])
            listed = named or any(address in network for network in self.networks)
            if listed:
                continue
            if not self.any_host:
                raise SourceNotAllowed(f"source host {host!r} ({address}) is not in {ALLOWED}")
            if not address.is_global:
                raise SourceNotAllowed(
                    f"source host {host!r} resolves to {address}, a private or reserved address: "
                    "list the host or its network in YOLOR_STREAM_ALLOWED_HOSTS to allow it"
                )

    def _file(self, path: str) -> Source:
        if self.root is None:
            raise SourceNotAllowed("file sources need YOLOR_STREAM_ROOT (the folder they are played from)")
        candidate = Path(path)
        full = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        if not full.is_relative_to(self.root):
            raise SourceNotAllowed(f"the file {path!r} is outside YOLOR_STREAM_ROOT")
        if not full.is_file():
            raise InvalidParameter(f"no file {path!r} under YOLOR_STREAM_ROOT")
        return Source(str(full), live=False, host=None)
