"""The reference half of benchmarks/tracking.py, run by the side venv's python (never the project's).

Reads the clips and our track ids from an .npz, runs `trackers`' ByteTrack on the same detections,
and scores every method against the ground truth with the well-kept evaluators: motmetrics (IDF1,
MOTA, ID switches; distances are 1 - IoU, no match below IoU 0.5) and `trackers.eval` (HOTA, a port
of TrackEval's). All clips are scored as one sequence with per-clip id offsets, which sums the
counts over clips as TrackEval's combined results do. Writes a JSON of {method: metrics}.

    .venv/cache/trackers-venv/bin/python benchmarks/tracking_reference.py DATA.npz OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version

import motmetrics as mm
import numpy as np
import supervision as sv
from trackers import ByteTrackTracker
from trackers.eval import box_iou, compute_hota_metrics

CLIP_ID_OFFSET = 100_000

# trackers' own defaults; then its thresholds set to ByteTrack's paper values, as ours are.
CONFIGS = {
    "trackers ByteTrack (defaults)": {},
    "trackers ByteTrack (paper thresholds)": {
        "high_conf_det_threshold": 0.5,
        "track_activation_threshold": 0.6,
        "minimum_iou_threshold": 0.2,
    },
}


def frames(data: dict[str, np.ndarray], prefix: str):
    """(clip, frame) -> row indices of the `prefix` arrays, in order."""
    keys = data[f"{prefix}_clip"] * CLIP_ID_OFFSET + data[f"{prefix}_frame"]
    return {int(k): np.flatnonzero(keys == k) for k in np.unique(keys)}


def run_reference(data: dict[str, np.ndarray], options: dict) -> tuple[np.ndarray, float]:
    """trackers' ids for every detection row (-1: untracked), and seconds per frame."""
    ids = np.full(len(data["det_scores"]), -1, dtype=np.int64)
    by_frame = frames(data, "det")
    n_frames, elapsed = 0, 0.0
    for clip in np.unique(data["gt_clip"]):
        tracker = ByteTrackTracker(**options)
        for frame in range(int(data["frames_per_clip"])):
            rows = by_frame.get(int(clip) * CLIP_ID_OFFSET + frame, np.empty(0, dtype=np.int64))
            detections = sv.Detections(
                xyxy=data["det_boxes"][rows].reshape(-1, 4).astype(np.float32),
                confidence=data["det_scores"][rows].astype(np.float32),
                class_id=data["det_classes"][rows].astype(int),
                data={"row": rows},
            )
            start = time.perf_counter()
            tracked = tracker.update(detections)
            elapsed += time.perf_counter() - start
            n_frames += 1
            if len(tracked):
                ids[tracked.data["row"]] = tracked.tracker_id
    return ids, elapsed / n_frames


def score(data: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, float]:
    """motmetrics' IDF1, MOTA, switches and trackers.eval's HOTA of one method's ids."""
    gt_frames, det_frames = frames(data, "gt"), frames(data, "det")
    accumulator = mm.MOTAccumulator(auto_id=True)
    hota_gt, hota_pred, hota_sim = [], [], []
    for key in sorted(set(gt_frames) | set(det_frames)):
        gt_rows = gt_frames.get(key, np.empty(0, dtype=np.int64))
        det_rows = det_frames.get(key, np.empty(0, dtype=np.int64))
        det_rows = det_rows[ids[det_rows] >= 0]
        clip_offset = (key // CLIP_ID_OFFSET) * CLIP_ID_OFFSET
        gt_ids = data["gt_ids"][gt_rows] + clip_offset
        pred_ids = ids[det_rows] + clip_offset
        iou = box_iou(data["gt_boxes"][gt_rows].reshape(-1, 4), data["det_boxes"][det_rows].reshape(-1, 4))
        accumulator.update(gt_ids.tolist(), pred_ids.tolist(), np.where(iou >= 0.5, 1.0 - iou, np.nan))
        hota_gt.append(gt_ids)
        hota_pred.append(pred_ids)
        hota_sim.append(iou)
    names = [
        "idf1",
        "idp",
        "idr",
        "mota",
        "motp",
        "num_switches",
        "num_false_positives",
        "num_misses",
        "mostly_tracked",
        "num_unique_objects",
    ]
    summary = mm.metrics.create().compute(accumulator, metrics=names, name="all")
    result = {name: float(summary[name].iloc[0]) for name in names}
    hota = compute_hota_metrics(_dense(hota_gt), _dense(hota_pred), hota_sim)
    result.update({key: float(hota[key]) for key in ("HOTA", "DetA", "AssA")})
    return result


def _dense(ids_per_frame: list[np.ndarray]) -> list[np.ndarray]:
    """Ids renumbered 0..K-1 over the sequence (trackers.eval indexes arrays by id)."""
    every = np.unique(np.concatenate(ids_per_frame)) if ids_per_frame else np.empty(0, dtype=np.int64)
    return [np.searchsorted(every, ids).astype(np.int64) for ids in ids_per_frame]


def main() -> None:
    data_path, out_path = sys.argv[1], sys.argv[2]
    data = dict(np.load(data_path))
    results = {
        str(name): {
            **score(data, data[f"ours_ids_{i}"]),
            "ms_per_frame": float(data[f"ours_ms_per_frame_{i}"]),
        }
        for i, name in enumerate(data["ours_names"])
    }
    for name, options in CONFIGS.items():
        ids, seconds = run_reference(data, options)
        results[name] = {**score(data, ids), "ms_per_frame": 1000 * seconds, "options": options}
    results["_versions"] = {p: version(p) for p in ("trackers", "supervision", "motmetrics", "numpy")}
    with open(out_path, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
