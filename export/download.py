"""Resumable, verified file download (`yolor weights download`).

Streams to `<dest>.part`, resumes a partial `.part` with an HTTP Range request (a server that
ignores it makes the download start over), checks the length the server announced and an
optional sha256, lets a `verify` callback inspect the complete file, and only then renames it to
`dest` atomically: `dest` is either absent or complete and verified.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from service.backends.artifacts import sha256_file


class DownloadError(ValueError):
    """A download that failed or produced a file that must not be used."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    bytes: int
    sha256: str
    resumed_from: int  # bytes already in the .part file when this call started (0: fresh)


def _start(response: httpx.Response, offset: int) -> tuple[int, int | None]:
    """(offset the body starts at, total size or None) for a response to a request from `offset`."""
    length = response.headers.get("content-length")
    if response.status_code == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("content-range", ""))
        if not match or int(match.group(1)) != offset:
            raise DownloadError(
                f"server answered a range request with {response.headers.get('content-range')!r}"
            )
        return offset, None if match.group(2) == "*" else int(match.group(2))
    return 0, int(length) if length is not None else None  # 200: the whole file again


def _stream(client: httpx.Client, url: str, part: Path, progress: bool) -> int:
    """Append the rest of `url` to `part`; returns the bytes it had before."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:  # nothing past the end: the .part is stale
            part.unlink()
            return _stream(client, url, part, progress)
        if response.status_code not in (200, 206):
            raise DownloadError(f"HTTP {response.status_code} for {url}")
        start, total = _start(response, offset)
        with (
            part.open("ab" if start else "wb") as f,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                mininterval=1.0,
            ) as bar,
        ):
            for block in response.iter_bytes():  # as it arrives: a cut keeps all it got
                f.write(block)
                bar.update(len(block))
        size = part.stat().st_size
        if total is not None and size != total:
            raise DownloadError(f"{url}: got {size} of {total} bytes (run again to resume)")
    return start


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    verify: Callable[[Path], None] | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> Downloaded:
    """Download `url` to `dest` (see the module docstring). `verify(path)` raises to reject the file.

    Network errors keep the `.part` for the next call to resume; a wrong sha256 or a rejected
    file deletes it. Raises DownloadError."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with httpx.Client(follow_redirects=True, timeout=timeout_s) as client:
            resumed_from = _stream(client, url, part, progress)
    except httpx.HTTPError as e:
        raise DownloadError(f"download of {url} failed: {e} (run again to resume)") from None
    digest = sha256_file(part)
    try:
        if sha256 is not None and digest != sha256.lower():
            raise DownloadError(f"{url}: sha256 {digest} does not match the expected {sha256.lower()}")
        if verify is not None:
            verify(part)
    except Exception:
        part.unlink()
        raise
    size = part.stat().st_size
    os.replace(part, dest)
    return Downloaded(dest, size, digest, resumed_from)
