"""`pip install .` (not editable) into a fresh venv, then `yolor serve` serves the bundled demo model:
the model is package data, found from site-packages, and the `serve` extra brings no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from bench.server import free_port
from service.processing.boxes import box_iou
from tests.support.processes import started_process, wait_until_ok
from train.data.synth import SynthOptions, generate_image, image_rng

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    done = subprocess.run(
        [str(root / "bin" / "pip"), "install", "-q", f"{ROOT}[serve]"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would put the source tree on sys.path."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("YOLOR_")}


def test_installed_package_has_the_demo_model_and_no_torch(venv):
    python = str(venv / "bin" / "python")
    code = "import service.settings as s; print(s.DEMO_MODEL_DIR)"
    where = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=venv, env=clean_env())
    demo = Path(where.stdout.strip())
    assert demo.is_relative_to(venv) and (demo / "model.json").is_file() and (demo / "model.onnx").is_file()
    torch = subprocess.run([python, "-c", "import torch"], capture_output=True, cwd=venv, env=clean_env())
    assert torch.returncode != 0


def test_installed_yolor_serve_detects_shapes_with_the_demo_model(venv, tmp_path):
    sample = generate_image(image_rng(1, "val", 0), SynthOptions(size=256))
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    assert ok and len(sample.boxes)
    port = free_port()
    log = tmp_path / "server.log"
    command = [str(venv / "bin" / "yolor"), "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with started_process(command, log, cwd=tmp_path, env=clean_env()) as server:
        wait_until_ok(f"{url}/readyz", server, log, timeout_s=90)
        model = httpx.get(f"{url}/model", timeout=10).json()
        assert model["arch"] == "yolor_csp" and model["class_names"][0] == "circle"
        answer = httpx.post(
            f"{url}/detect", files={"images": ("s.jpg", jpeg.tobytes(), "image/jpeg")}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        found = answer.json()["results"][0]["detections"]
        boxes = np.array([d["box"] for d in found], dtype=np.float32).reshape(-1, 4)
        classes = np.array([d["class_id"] for d in found])
        iou = box_iou(sample.boxes.astype(np.float32), boxes)
        hits = (iou > 0.5) & (sample.classes[:, None] == classes[None, :])
        assert hits.any(axis=1).mean() >= 0.5, (sample.boxes, sample.classes, found)  # most shapes found
