"""The bundled demo model's sample image (`service/demo_model/sample.jpg` + `sample.json`).

The page at `/` offers it as "Try a sample": a user's own photo has no coloured shapes in it, so the
demo model finds nothing there. The sample is one image of the synthetic-shapes data the demo model
was trained on (`train.data.synth`), drawn from a seed it never saw (training used seed 0, the
held-out set of docs/training.md seed 1). `sample.json` holds its ground truth.

Regenerate with ``python -m train.demo_sample [--out DIR]`` (default: the bundled demo model folder).
The labels are exact on every machine (see `train.data.synth`); the JPEG bytes may differ by a few
grey levels between OpenCV builds, which is why the tests compare its pixels, not its bytes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2

from train.data.synth import CLASS_NAMES, GENERATOR_VERSION, SynthOptions, generate_image, image_rng

SAMPLE_IMAGE, SAMPLE_LABELS = "sample.jpg", "sample.json"
# seed 2, val image 75: seven shapes of six classes on a photo background, all well found by the demo
# model (the smallest IoU with its detection is 0.87, the lowest score 0.75 at the time of choosing)
SEED, SPLIT, INDEX = 2, "val", 75
OPTIONS = SynthOptions(size=256)  # the demo model's input size, as in its training data
JPEG_QUALITY = 90


def make_sample() -> tuple[bytes, dict[str, Any]]:
    """The sample's JPEG bytes and its ground truth (boxes xyxy in pixel edges, as the generator labels)."""
    sample = generate_image(image_rng(SEED, SPLIT, INDEX), OPTIONS)
    bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the sample as JPEG")
    height, width = sample.image.shape[:2]
    objects = [
        {"box": [float(v) for v in box], "class_id": int(class_id), "class_name": CLASS_NAMES[class_id]}
        for box, class_id in zip(sample.boxes.tolist(), sample.classes.tolist(), strict=True)
    ]
    truth = {
        "image": SAMPLE_IMAGE,
        "width": width,
        "height": height,
        "generator": GENERATOR_VERSION,
        "seed": SEED,
        "split": SPLIT,
        "index": INDEX,
        "options": asdict(OPTIONS),
        "class_names": list(CLASS_NAMES),
        "objects": objects,
    }
    return jpeg.tobytes(), truth


def labels_text(truth: dict[str, Any]) -> str:
    """`sample.json`'s text: the ground truth, one object a line."""
    head = {k: v for k, v in truth.items() if k != "objects"}
    body = json.dumps(head, indent=2)[:-2]  # drop the closing "\n}"
    objects = ",\n    ".join(json.dumps(o) for o in truth["objects"])
    return f'{body},\n  "objects": [\n    {objects}\n  ]\n}}\n'


def write_sample(out_dir: str | Path) -> tuple[Path, Path]:
    """Write `sample.jpg` and `sample.json` into `out_dir`; returns their paths."""
    root = Path(out_dir)
    jpeg, truth = make_sample()
    image_path, labels_path = root / SAMPLE_IMAGE, root / SAMPLE_LABELS
    image_path.write_bytes(jpeg)
    labels_path.write_text(labels_text(truth), encoding="utf-8")
    return image_path, labels_path


def main(argv: Sequence[str] | None = None) -> int:
    from service.settings import DEMO_MODEL_DIR

    parser = argparse.ArgumentParser(prog="python -m train.demo_sample", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in write_sample(args.out):
        print(f"wrote {path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
