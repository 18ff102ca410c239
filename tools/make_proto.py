"""Compile service/kserve/proto/inference.proto into the descriptor set the service loads at run time.

    python tools/make_proto.py          # needs grpcio-tools (dev extra); rewrites inference.desc

The service builds its message classes from this descriptor in a private pool
(`service.kserve.messages`), so no generated Python is committed and the messages do not clash with a
client's own copy of the same protocol (tritonclient registers `inference.*` in the default pool).
`tests/service/kserve/test_grpc.py` checks the file is current.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[1] / "service" / "kserve" / "proto"
DESCRIPTOR = PROTO_DIR / "inference.desc"


def compile_descriptor() -> bytes:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "inference.desc"
        args = ["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", str(PROTO_DIR / "inference.proto")]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        return out.read_bytes()


def main() -> None:
    DESCRIPTOR.write_bytes(compile_descriptor())
    print(f"wrote {DESCRIPTOR} ({DESCRIPTOR.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
