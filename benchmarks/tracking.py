"""Tracking measured (issue 27): our ByteTrack (service/tracking) against the `trackers` package's.

Data: `--clips` synthetic clips (bench/tracking_clips.py, seeds `--seed`.. `--seed + clips - 1`, the
default ClipOptions: 150 frames at 960x540, 10 moving boxes of 3 classes, 2 crossing pairs, depth
occlusion) with the detector stand-in's detections: jitter, misses, low scores while half hidden,
false positives. Every tracker sees the same detections; what a tracker outputs is the detections it
gave an id.

- ours: `ByteTracker()` with its defaults, and with the ByteTrack paper's values of the two
  settings whose defaults differ from them (`match_thresh`, `low_score_revives_lost`), run here;
- `trackers` (Roboflow, Apache-2.0) `ByteTrackTracker` with its defaults, and with its thresholds set
  to the paper's, run in a side venv (it needs opencv-python, supervision, scipy: never in the
  serving image) by benchmarks/tracking_reference.py, which also scores every method: motmetrics
  (IDF1, MOTA, ID switches at IoU >= 0.5) and `trackers.eval` (HOTA).

Printed and written to OUT/tracking.json and OUT/table.md.

    .venv/bin/python benchmarks/tracking.py --out benchmarks/results/cpu/tracking

The side venv is made on first use: .venv/cache/trackers-venv with trackers==2.6.1 and
motmetrics==1.4.0 (`--reference-python` points at another).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tracking_clips import Clip, ClipOptions, make_clip
from service.tracking import ByteTracker, TrackerSettings

ROOT = Path(__file__).resolve().parents[1]
SIDE_VENV = ROOT / ".venv" / "cache" / "trackers-venv"
SIDE_PACKAGES = ["trackers==2.6.1", "motmetrics==1.4.0"]
COLUMNS = [
    ("IDF1", "idf1", "{:.3f}"),
    ("HOTA", "HOTA", "{:.3f}"),
    ("AssA", "AssA", "{:.3f}"),
    ("MOTA", "mota", "{:.3f}"),
    ("ID switches", "num_switches", "{:.0f}"),
    ("FP", "num_false_positives", "{:.0f}"),
    ("misses", "num_misses", "{:.0f}"),
    ("ms/frame", "ms_per_frame", "{:.2f}"),
]


def side_python(path: str | None) -> Path:
    """The reference venv's python; the default venv is created and filled on first use."""
    if path:
        return Path(path)
    python = SIDE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SIDE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *SIDE_PACKAGES], check=True)
    return python


# Ours with its defaults, and with the paper's values of the two defaults that differ from it.
OURS = {
    "ours": TrackerSettings(),
    "ours, match_thresh 0.8 (paper)": TrackerSettings(match_thresh=0.8),
    "ours, paper rules (0.8, no low-score revival)": TrackerSettings(
        match_thresh=0.8, low_score_revives_lost=False
    ),
}


def run_ours(clips: list[Clip], settings: TrackerSettings) -> tuple[list[np.ndarray], float]:
    """Our ids per frame of every clip, and milliseconds per frame."""
    ids, elapsed, frames = [], 0.0, 0
    for clip in clips:
        tracker = ByteTracker(settings)
        for boxes, scores, classes in zip(clip.boxes, clip.scores, clip.classes, strict=True):
            start = time.perf_counter()
            ids.append(tracker.update(boxes, scores, classes))
            elapsed += time.perf_counter() - start
            frames += 1
    return ids, 1000 * elapsed / frames


def flatten(
    clips: list[Clip], ours: dict[str, tuple[list[np.ndarray], float]], frames: int
) -> dict[str, np.ndarray]:
    """Ragged per-frame arrays as flat rows tagged with (clip, frame), for the side process."""
    det: dict[str, list[np.ndarray]] = {k: [] for k in ("clip", "frame", "boxes", "scores", "classes")}
    gt: dict[str, list[np.ndarray]] = {k: [] for k in ("clip", "frame", "ids", "boxes")}
    for c, clip in enumerate(clips):
        for f in range(frames):
            det["clip"].append(np.full(len(clip.scores[f]), c))
            det["frame"].append(np.full(len(clip.scores[f]), f))
            det["boxes"].append(clip.boxes[f].reshape(-1, 4))
            det["scores"].append(clip.scores[f])
            det["classes"].append(clip.classes[f])
            gt["clip"].append(np.full(len(clip.gt_ids[f]), c))
            gt["frame"].append(np.full(len(clip.gt_ids[f]), f))
            gt["ids"].append(clip.gt_ids[f])
            gt["boxes"].append(clip.gt_boxes[f].reshape(-1, 4))
    out = {f"det_{k}": np.concatenate(v) for k, v in det.items()}
    out.update({f"gt_{k}": np.concatenate(v) for k, v in gt.items()})
    out["ours_names"] = np.array(list(ours))
    for i, (ids, ms) in enumerate(ours.values()):
        out[f"ours_ids_{i}"] = np.concatenate(ids)
        out[f"ours_ms_per_frame_{i}"] = np.array(ms)
    out["frames_per_clip"] = np.array(frames)
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| tracker | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, metrics in results.items():
        if not name.startswith("_"):
            cells = [fmt.format(metrics[key]) for _, key, fmt in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference-python", help="a python with trackers and motmetrics installed")
    args = parser.parse_args()
    options = ClipOptions()
    clips = [make_clip(args.seed + i, options) for i in range(args.clips)]
    ours = {name: run_ours(clips, settings) for name, settings in OURS.items()}
    python = side_python(args.reference_python)
    with tempfile.TemporaryDirectory() as tmp:
        data, scored = Path(tmp) / "clips.npz", Path(tmp) / "scored.json"
        np.savez(data, **flatten(clips, ours, options.frames))
        subprocess.run(
            [str(python), str(ROOT / "benchmarks" / "tracking_reference.py"), data, scored], check=True
        )
        results = json.loads(scored.read_text())
    results["_setup"] = {
        "clips": args.clips,
        "seed": args.seed,
        "frames": options.frames,
        "options": repr(options),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tracking.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "table.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
