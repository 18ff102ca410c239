"""`python -m service.healthcheck [PATH]`: exit 0 when the local server answers 200 on PATH.

The image's HEALTHCHECK (and compose's) runs it, so the serving image needs no curl. The port is
`YOLOR_PORT` (default 8000); PATH defaults to /healthz (the process is alive; /readyz: warmed up).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(path: str = "/healthz", port: int | None = None, timeout_s: float = 4.0) -> bool:
    port = port if port is not None else int(os.environ.get("YOLOR_PORT") or 8000)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):  # refused, timed out, or an HTTP error status
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return 0 if check(args[0] if args else "/healthz") else 1


if __name__ == "__main__":
    sys.exit(main())
