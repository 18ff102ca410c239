"""`yolor weights` against a local HTTP server on 127.0.0.1 serving checkpoints made here (this
machine cannot reach GitHub): streaming, resume of a `.part`, sha256, refused files, HTTP errors."""

from __future__ import annotations

import hashlib
import http.server
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import yolor
from cli import main
from export.download import DownloadError, download
from export.official_weights import OFFICIAL_WEIGHTS, RELEASE_URL

pytestmark = pytest.mark.export

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Files:
    """What the server serves, and what it saw."""

    content: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # close the connection after N bytes, once
    ignore_range: bool = False
    ranges: list[str | None] = field(default_factory=list)


class Handler(http.server.BaseHTTPRequestHandler):
    files: Files

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", f"/files/{name}")
            self.end_headers()
            return
        data = self.files.content.get(name)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        self.files.ranges.append(rng)
        start = 0
        if rng and not self.files.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.files.cut_after.pop(name, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True


@pytest.fixture()
def server() -> Iterator[tuple[str, Files]]:
    files = Files()
    handler = type("H", (Handler,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def p6_bytes(tmp_path_factory) -> bytes:
    """A small yolor_p6 (official layout, shrunk) in our checkpoint format."""
    path = tmp_path_factory.mktemp("w") / "yolor_p6.pt"
    yolor.save_checkpoint(yolor.build_model("yolor_p6", nc=80, depth=0.33, width=0.1), path, input_size=128)
    return path.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(*args: str) -> int:
    return main(["weights", *args])


def test_every_official_checkpoint_is_listed_with_its_release_url(capsys):
    expected = {"yolor_p6", "yolor_w6", "yolor_csp", "yolor_csp_star", "yolor_csp_x", "yolor_csp_x_star"}
    expected |= {"yolor-p6", "yolor-w6", "yolor-e6", "yolor-d6", "yolor-ssss-dwt", "yolor-ssss-s2d"}
    assert set(OFFICIAL_WEIGHTS) == expected
    assert run("list") == 0
    out = capsys.readouterr().out
    for w in OFFICIAL_WEIGHTS.values():
        assert f"{RELEASE_URL}{w.name}.pt" in out


def test_every_listed_arch_is_registered():
    from yolor.archs.specs import ARCHS

    assert {w.arch for w in OFFICIAL_WEIGHTS.values()} <= set(ARCHS)


def test_download_streams_verifies_and_renames(server, p6_bytes, tmp_path, capsys):
    base, files = server
    files.content["yolor_p6.pt"] = p6_bytes
    assert run("download", "yolor_p6", "--out", str(tmp_path), "--base-url", f"{base}/files", "--quiet") == 0
    dest = tmp_path / "yolor_p6.pt"
    assert dest.read_bytes() == p6_bytes and not (tmp_path / "yolor_p6.pt.part").exists()
    out = capsys.readouterr().out
    assert f"{len(p6_bytes)} bytes, sha256 {sha(p6_bytes)}" in out
    # a second call finds it and downloads nothing
    assert run("download", "yolor_p6", "--out", str(tmp_path), "--base-url", f"{base}/files") == 0
    assert "already there" in capsys.readouterr().out and len(files.ranges) == 1


def test_follows_redirects_as_github_releases_do(server, p6_bytes, tmp_path):
    base, files = server
    files.content["yolor_p6.pt"] = p6_bytes
    got = download(f"{base}/redirect/yolor_p6.pt", tmp_path / "x.pt", progress=False)
    assert got.sha256 == sha(p6_bytes) and got.resumed_from == 0


def test_an_interrupted_download_resumes_where_it_stopped(server, p6_bytes, tmp_path):
    base, files = server
    files.content["yolor_p6.pt"] = p6_bytes
    files.cut_after["yolor_p6.pt"] = len(p6_bytes) // 3
    args = ("download", "yolor_p6", "--out", str(tmp_path), "--base-url", f"{base}/files", "--quiet")
    assert run(*args) == 2  # cut off: an error, the .part kept, nothing at the final name
    part = tmp_path / "yolor_p6.pt.part"
    assert part.stat().st_size == len(p6_bytes) // 3 and not (tmp_path / "yolor_p6.pt").exists()
    assert run(*args, "--sha256", sha(p6_bytes)) == 0
    assert files.ranges[-1] == f"bytes={len(p6_bytes) // 3}-"  # asked only for the rest
    assert (tmp_path / "yolor_p6.pt").read_bytes() == p6_bytes and not part.exists()


def test_a_server_ignoring_range_restarts_cleanly(server, p6_bytes, tmp_path):
    base, files = server
    files.content["f.pt"] = p6_bytes
    files.ignore_range = True
    (tmp_path / "f.pt.part").write_bytes(b"garbage that must not stay in front")
    got = download(f"{base}/files/f.pt", tmp_path / "f.pt", sha256=sha(p6_bytes), progress=False)
    assert got.resumed_from == 0 and (tmp_path / "f.pt").read_bytes() == p6_bytes


def test_a_stale_complete_part_is_fetched_again(server, p6_bytes, tmp_path):
    base, files = server
    files.content["f.pt"] = p6_bytes
    (tmp_path / "f.pt.part").write_bytes(b"x" * (len(p6_bytes) + 10))  # longer than the file: 416
    got = download(f"{base}/files/f.pt", tmp_path / "f.pt", progress=False)
    assert got.sha256 == sha(p6_bytes)


def test_wrong_sha256_is_refused_and_nothing_is_kept(server, p6_bytes, tmp_path, caplog):
    base, files = server
    files.content["yolor_p6.pt"] = p6_bytes
    code = run("download", "yolor_p6", "--out", str(tmp_path), "--base-url", f"{base}/files", "--quiet",
               "--sha256", "0" * 64)  # fmt: skip
    assert code == 2 and "does not match" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_a_file_yolor_refuses_is_an_error_and_is_not_kept(server, tmp_path, caplog):
    base, files = server
    files.content["yolor-e6.pt"] = b"<html>not a checkpoint</html>"
    assert run("download", "yolor-e6", "--out", str(tmp_path), "--base-url", f"{base}/files", "--quiet") == 2
    assert "error:" in caplog.text and list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_arch_is_refused(server, p6_bytes, tmp_path, caplog):
    base, files = server
    files.content["yolor_csp.pt"] = p6_bytes  # a p6 under the csp name
    assert run("download", "yolor_csp", "--out", str(tmp_path), "--base-url", f"{base}/files", "--quiet") == 2
    assert "not the expected yolor_csp" in caplog.text


def test_http_errors_exit_2_with_the_status(server, tmp_path, caplog):
    base, _ = server
    assert run("download", "yolor-d6", "--out", str(tmp_path), "--base-url", f"{base}/files", "--quiet") == 2
    assert "HTTP 404" in caplog.text
    assert run("download", "nope", "--out", str(tmp_path)) == 2
    with pytest.raises(DownloadError, match="failed"):  # nothing listens there
        download("http://127.0.0.1:9/x.pt", tmp_path / "x.pt", progress=False, timeout_s=2)


@pytest.mark.slow
def test_prepare_script_downloads_and_exports_once(server, p6_bytes, tmp_path):
    """deploy/prepare-model.sh (the compose export step and the Kubernetes init container)."""
    base, files = server
    files.content["yolor_p6.pt"] = p6_bytes
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "YOLOR_WEIGHTS_BASE_URL": f"{base}/files",
        "YOLOR_EXPORT_IMG_SIZE": "128",
        "YOLOR_EXPORT_MAX_BATCH": "2",
        "HOME": str(tmp_path),
    }
    script = str(ROOT / "deploy" / "prepare-model.sh")
    done = subprocess.run([script, "yolor_p6", str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    from service.manifest import load_manifest

    manifest = load_manifest(tmp_path / "yolor_p6")
    assert manifest.arch == "yolor_p6" and manifest.input_size == 128 and manifest.max_batch == 2
    assert {"onnx", "onnx_fp16"} <= set(manifest.artifacts)
    assert manifest.source["sha256"] == sha(p6_bytes)
    again = subprocess.run([script, "yolor_p6", str(tmp_path)], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already exported" in again.stdout
    assert len(files.ranges) == 1  # downloaded once
