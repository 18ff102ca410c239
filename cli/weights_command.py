"""`yolor weights list|show|download`: the official YOLOR checkpoints, one command away.

Downloads go to `--out` (default `weights/`) as `<name>.pt`, resumable and verified: the file must
load with `yolor.load_model` as the expected arch (needs torch, imported only then). `--base-url`
(or `YOLOR_WEIGHTS_BASE_URL`) points at a mirror that holds the same file names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from cli.errors import CommandError

BASE_URL_VARIABLE = "YOLOR_WEIGHTS_BASE_URL"


def sha256_hex(text: str) -> str:
    """An argparse `type`: 64 hex digits (checked before any download)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"must be 64 hex digits, got {text!r}")
    return text.lower()


def _cmd_list(args: argparse.Namespace) -> int:
    from export.official_weights import OFFICIAL_WEIGHTS

    sys.stdout.write(f"{'name':18s} {'branch':6s} {'arch':12s} {'size':>5s} {'AP':>5s}  url\n")
    for w in OFFICIAL_WEIGHTS.values():
        ap = f"{w.ap:.1f}" if w.ap is not None else "-"
        note = "" if w.linked else "  (not linked by its README)"
        sys.stdout.write(
            f"{w.name:18s} {w.branch:6s} {w.arch:12s} {w.img_size:5d} {ap:>5s}  {w.url()}{note}\n"
        )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from export.official_weights import official_weights

    w = official_weights(args.name)
    info = {**dataclasses.asdict(w), "file": w.file, "url": w.url(_base_url(args))}
    if args.field is not None:
        if args.field not in info:
            raise CommandError(f"no field {args.field!r} (fields: {', '.join(info)})")
        sys.stdout.write(f"{info[args.field]}\n")
    else:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    return 0


def _base_url(args: argparse.Namespace) -> str:
    from export.official_weights import RELEASE_URL

    return str(args.base_url or os.environ.get(BASE_URL_VARIABLE) or RELEASE_URL)


def _verifier(arch: str) -> Callable[[Path], None]:
    def verify(path: Path) -> None:
        from export.download import DownloadError
        from yolor.checkpoint import load_model

        model = load_model(path)  # CheckpointError on anything it refuses
        if model.arch != arch:
            raise DownloadError(f"the file is a {model.arch}, not the expected {arch}")

    return verify


def _cmd_download(args: argparse.Namespace) -> int:
    from export.download import download
    from export.official_weights import official_weights
    from service.backends.artifacts import sha256_file

    w = official_weights(args.name)
    dest = Path(args.out) / w.file
    verify = _verifier(w.arch)
    if dest.exists() and not args.force:
        digest = sha256_file(dest)
        if args.sha256 is not None and digest != args.sha256.lower():
            raise CommandError(f"{dest} exists with sha256 {digest}, not {args.sha256}; use --force")
        verify(dest)
        sys.stdout.write(f"{dest}: already there, {dest.stat().st_size} bytes, sha256 {digest}\n")
        return 0
    url = w.url(_base_url(args))
    sys.stderr.write(f"downloading {url}\n")
    got = download(url, dest, sha256=args.sha256, verify=verify, progress=not args.quiet)
    resumed = f", resumed at byte {got.resumed_from}" if got.resumed_from else ""
    sys.stdout.write(f"{got.path}: {got.bytes} bytes, sha256 {got.sha256}{resumed}\n")
    return 0


def _add_base_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url", default=None, help=f"mirror base URL (default ${BASE_URL_VARIABLE} or GitHub)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list and download the official YOLOR checkpoints")
    weights = p.add_subparsers(dest="weights_command", required=True)
    q = weights.add_parser("list", help="the official checkpoints and their release URLs")
    q.set_defaults(func=_cmd_list)
    q = weights.add_parser("show", help="one checkpoint's facts as JSON (or one --field)")
    q.add_argument("name")
    q.add_argument("--field", default=None, help="print only this field (e.g. img_size, url, arch)")
    _add_base_url(q)
    q.set_defaults(func=_cmd_show)
    q = weights.add_parser(
        "download",
        help="download an official checkpoint (resumable, verified)",
        description="Streams to OUT/NAME.pt.part, resumes a partial download, checks --sha256 if given, "
        "checks that yolor loads it as the expected arch, then renames it to OUT/NAME.pt.",
    )
    q.add_argument("name")
    q.add_argument("--out", type=Path, default=Path("weights"), help="directory (default: weights)")
    q.add_argument(
        "--sha256",
        type=sha256_hex,
        default=None,
        help="expected sha256 (the official release publishes none)",
    )
    _add_base_url(q)
    q.add_argument("--force", action="store_true", help="download again even if OUT/NAME.pt exists")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_download)
