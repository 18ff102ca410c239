"""Automatic numerical validation of an exported ONNX model against the unfused PyTorch model.

Runs the ONNX file through the serving backend (`OnnxRuntimeBackend`, on the CPU) at batch sizes other
than the traced one, on real photos (scikit-image's bundled samples, letterboxed by the serving code)
and on random inputs, reads its rows through the head contract (`service.processing.heads`), and
compares:
- raw head: max abs / relative error of the predictions;
- topk head: relative error of the sorted candidate scores, and detection agreement after the
  serving post-processing (threshold + NMS): a reference detection counts as kept when the exported
  model has one of the same class with IoU >= 0.9.
FP32 must stay within 1e-4 of max|output| (relative); FP16 must keep >= 99% of detections.
INT8 (`validate_int8`) is compared with the FP32 export instead: it must keep >= 90% of its
detections at IoU >= 0.75 and, on a labelled set, lose at most 1 point of mAP@0.5:0.95 (flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from export.graph import ExportGraph
from export.onnx_export import INPUT_NAME
from service.backends.base import BackendError
from service.backends.onnx_runtime import OnnxRuntimeBackend
from service.host import host_cpu_count
from service.processing import Detections, box_iou, letterbox, select_detections, to_input_tensor
from service.processing.heads import Head, head_layout
from yolor.heads import topk_candidates
from yolor.model import YOLOR

FloatArray = npt.NDArray[np.float32]

PHOTOS = ("astronaut", "coffee", "chelsea")  # scikit-image data bundled offline; 3 = not the trace batch
FP32_MAX_REL_ERROR = 1e-4
MIN_AGREEMENT = 0.99  # both precisions; FP32 is also held to the error bound
MATCH_IOU = 0.9
INT8_MIN_AGREEMENT = 0.9  # INT8: detections of the FP32 export it keeps ...
INT8_MATCH_IOU = 0.75  # ... counted at this IoU (int8 activations move box edges by a pixel or so)
INT8_MAX_MAP_DROP = 1.0  # points of mAP@0.5:0.95 on a labelled set
INT8_MIN_DETECTIONS = 10  # fewer FP32 detections than this in the gate's images: nothing to judge


class ValidationFailed(RuntimeError):
    """The exported model is out of tolerance; the export must not be used."""


@dataclass(frozen=True)
class PostprocessParams:
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300


def photo_batch(img_size: int) -> FloatArray:
    """The sample photos letterboxed exactly as the server does it: (3, 3, S, S) float32."""
    from skimage import data

    images = [letterbox(np.ascontiguousarray(getattr(data, name)()), img_size)[0] for name in PHOTOS]
    return to_input_tensor(images)


def random_batch(img_size: int, batch: int = 1, seed: int = 0) -> FloatArray:
    return np.random.default_rng(seed).random((batch, 3, img_size, img_size), dtype=np.float32)


def reference_output(model: YOLOR, batch: FloatArray, head: Head, top_k: int | None) -> FloatArray:
    """The unfused PyTorch model in float32 through the same head semantics."""
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(batch))
        assert isinstance(pred, torch.Tensor)
        if head == "topk":
            assert top_k is not None
            pred = topk_candidates(pred, min(top_k, pred.shape[1]))
    return pred.numpy()


def candidates(model: YOLOR, img_size: int) -> int:
    """Rows of the decoded output for a square input (anchors x cells over all levels)."""
    return model.spec.num_anchors * sum((img_size // s) ** 2 for s in model.strides)


def run_onnx(path: str | Path, batches: list[FloatArray], head: Head) -> tuple[list[FloatArray], list[str]]:
    """Outputs of `batches` from the ONNX file as the server runs it (`OnnxRuntimeBackend`, CPU, the
    host's threads), and the providers ONNX Runtime activated. ValidationFailed when the serving
    backend cannot load or run the file: an export the server cannot run must not be used."""
    img_size = int(batches[0].shape[-1])
    try:
        backend = OnnxRuntimeBackend(
            Path(path),
            head=head,
            max_batch_size=max(int(b.shape[0]) for b in batches),
            profile=(INPUT_NAME, img_size),
            device="cpu",
            intra_op_threads=host_cpu_count(),
        )
    except BackendError as e:
        raise ValidationFailed(f"the serving backend cannot load {path}: {e}") from e
    try:
        return [backend.infer(batch) for batch in batches], list(backend.providers)
    except (BackendError, ValueError) as e:
        raise ValidationFailed(f"the serving backend cannot run {path}: {e}") from e
    finally:
        backend.close()


def count_matches(ref: Detections, cand: Detections, iou_min: float = MATCH_IOU) -> int:
    """Greedy one-to-one matching in reference score order: same class and IoU >= iou_min."""
    if len(ref) == 0 or len(cand) == 0:
        return 0
    iou = box_iou(ref.boxes, cand.boxes)
    iou[ref.class_ids[:, None] != cand.class_ids[None, :]] = 0.0
    used = np.zeros(len(cand), dtype=bool)
    matched = 0
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(used, 0.0, iou[i])
        j = int(row.argmax())
        if row[j] >= iou_min:
            used[j] = True
            matched += 1
    return matched


def _detections(
    out: FloatArray, head: Head, post: PostprocessParams, floors: npt.NDArray[np.floating[Any]]
) -> list[Detections]:
    """The serving post-processing of each image (threshold + NMS) on candidates scoring above the
    image's floor, in a canonical order (score, class, box) so that NMS among equal scores makes the
    same choice whatever order the backend returned them in."""
    layout = head_layout(head)
    dets = []
    for img, floor in zip(out, floors, strict=True):
        boxes, scores, class_ids = layout.candidates(img, max(post.conf, float(floor)))
        scores = np.round(scores, 6)  # equal up to float noise = equal
        rounded = np.round(boxes, 2)
        order = np.lexsort((rounded[:, 3], rounded[:, 2], rounded[:, 1], rounded[:, 0], class_ids, -scores))
        dets.append(
            select_detections(
                boxes[order],
                scores[order],
                class_ids[order],
                conf=post.conf,
                iou=post.iou,
                max_det=post.max_det,
            )
        )
    return dets


def compare(
    ref: FloatArray,
    got: FloatArray,
    head: Head,
    post: PostprocessParams,
    truncated: bool,
    match_iou: float = MATCH_IOU,
) -> dict[str, Any]:
    """Error statistics of one batch (see module docstring).

    Detection agreement: each reference detection (after threshold + NMS) is *kept* when the exported
    model still produces a candidate of the same class with IoU >= 0.9 scoring above the threshold
    (less 2% for rounding). Matching before NMS keeps the measure meaningful where NMS has to choose
    among overlapping candidates of near-equal score, a choice float noise may flip.
    `agreement_after_nms` (reported, not gated) matches against the exported model's NMS output.

    `truncated`: the topk head kept fewer rows than there are candidates. Candidates tied with the
    last kept score are then in or out by the backend's tie order, not by the model, so reference
    detections are only those scoring clearly above that boundary (real models score ~0 there;
    constant image regions such as letterbox padding produce exact ties).
    """
    if ref.shape != got.shape:
        return {"shape_mismatch": [list(ref.shape), list(got.shape)]}
    stats: dict[str, Any]
    if head == "raw":
        err = float(np.abs(ref - got).max())
        stats = {"max_abs_error": err, "max_rel_error": err / (float(np.abs(ref).max()) or 1.0)}
    else:  # rows may swap between equal or near-equal scores: compare the sorted score lists
        scores_ref, scores_got = np.sort(ref[..., 4], axis=1), np.sort(got[..., 4], axis=1)
        err = float(np.abs(scores_ref - scores_got).max())
        stats = {"score_max_abs_error": err, "max_rel_error": err / (float(np.abs(scores_ref).max()) or 1.0)}
    none = np.full(len(ref), -np.inf)
    # The boundary tie group can straddle the last kept score by a few ulps: a margin excludes it whole.
    floors = ref[:, -1, 4] * (1 + 1e-5) + 1e-7 if head == "topk" and truncated else none
    ref_dets, got_dets = _detections(ref, head, post, floors), _detections(got, head, post, none)
    kept = 0
    for r, img in zip(ref_dets, got, strict=True):
        kept += count_matches(r, Detections(*head_layout(head).candidates(img, post.conf * 0.98)), match_iou)
    stats["boundary_score"] = [float(f) for f in floors] if head == "topk" and truncated else None
    stats["detections_reference"] = sum(len(d) for d in ref_dets)
    stats["detections_matched"] = kept
    stats["detections_matched_after_nms"] = sum(
        count_matches(r, g, match_iou) for r, g in zip(ref_dets, got_dets, strict=True)
    )
    return stats


def validate_onnx(
    path: str | Path,
    model: YOLOR,
    graph: ExportGraph,
    img_size: int,
    precision: str,
    post: PostprocessParams | None = None,
) -> dict[str, Any]:
    """Validate one ONNX file; returns the record stored in the manifest, raises ValidationFailed."""
    post = post or PostprocessParams()
    batches = {"photos": photo_batch(img_size), "random": random_batch(img_size)}
    per_batch: dict[str, dict[str, Any]] = {}
    outputs, providers = run_onnx(path, list(batches.values()), graph.head)
    truncated = graph.top_k is not None and graph.top_k < candidates(model, img_size)
    for (name, batch), got in zip(batches.items(), outputs, strict=True):
        ref = reference_output(model, batch, graph.head, graph.top_k)
        per_batch[name] = {
            "batch_size": int(batch.shape[0]),
            **compare(ref, got, graph.head, post, truncated),
        }
    record = _summarise(per_batch, graph.head, precision, post)
    record["providers"] = providers
    if not record["passed"]:
        raise ValidationFailed(f"{precision} ONNX out of tolerance: {record['failure']}")
    return record


def _summarise(
    per_batch: dict[str, dict[str, Any]], head: Head, precision: str, post: PostprocessParams
) -> dict[str, Any]:
    rec: dict[str, Any] = {"precision": precision, "head": head, "batches": per_batch, "photos": list(PHOTOS)}
    mismatched = [n for n, b in per_batch.items() if "shape_mismatch" in b]
    if mismatched:
        return {**rec, "passed": False, "failure": f"output shape differs on batch {mismatched}"}
    total = sum(b["detections_reference"] for b in per_batch.values())
    matched = sum(b["detections_matched"] for b in per_batch.values())
    after_nms = sum(b["detections_matched_after_nms"] for b in per_batch.values())
    rec.update(
        agreement_after_nms=after_nms / total if total else 1.0,
        max_rel_error=max(b["max_rel_error"] for b in per_batch.values()),
        detections_reference=total,
        detections_matched=matched,
        agreement=matched / total if total else 1.0,
        postprocess={"conf": post.conf, "iou": post.iou, "max_det": post.max_det, "match_iou": MATCH_IOU},
        tolerance={"fp32_max_rel_error": FP32_MAX_REL_ERROR, "min_agreement": MIN_AGREEMENT},
    )
    failures = []
    if rec["agreement"] < MIN_AGREEMENT:
        failures.append(f"detection agreement {rec['agreement']:.4f} < {MIN_AGREEMENT}")
    if precision == "fp32" and rec["max_rel_error"] > FP32_MAX_REL_ERROR:
        failures.append(f"max relative error {rec['max_rel_error']:.2e} > {FP32_MAX_REL_ERROR:.0e}")
    rec["passed"] = not failures
    if failures:
        rec["failure"] = "; ".join(failures)
    return rec


@dataclass(frozen=True)
class Int8Gate:
    """The INT8 tolerances: detection agreement with the FP32 export (matched at `match_iou`) and,
    with a labelled set, the mAP@0.5:0.95 it may lose, in points."""

    min_agreement: float = INT8_MIN_AGREEMENT
    match_iou: float = INT8_MATCH_IOU
    max_map_drop: float = INT8_MAX_MAP_DROP
    min_detections: int = INT8_MIN_DETECTIONS


@dataclass(frozen=True)
class Fp32Reference:
    """What the INT8 gate compares with, computed once for every INT8 flavour: the FP32 export's
    outputs on the gate's named batches and, with a labelled set, its mAP there."""

    outputs: dict[str, FloatArray]
    map: dict[str, Any] | None
    val_data: Path | None


def fp32_reference(
    fp32_path: Path,
    images: dict[str, FloatArray],
    *,
    head: Head,
    img_size: int,
    class_names: list[str],
    val_data: Path | None = None,
) -> Fp32Reference:
    """`images`: named batches of letterboxed inputs (the sample photos, some calibration images);
    `val_data`: a labelled dataset whose val split is evaluated."""
    outputs, _ = run_onnx(fp32_path, list(images.values()), head)
    maps = None if val_data is None else _dataset_map(fp32_path, head, img_size, class_names, val_data)
    return Fp32Reference(dict(zip(images, outputs, strict=True)), maps, val_data)


def validate_int8(
    int8_path: Path,
    reference: Fp32Reference,
    *,
    head: Head,
    img_size: int,
    truncated: bool,
    images: dict[str, FloatArray],
    post: PostprocessParams,
    gate: Int8Gate,
    class_names: list[str],
) -> dict[str, Any]:
    """Gate an INT8 export against the FP32 one it was made from (`reference`, on the same
    `images`); returns the manifest record, raises ValidationFailed."""
    int8_out, providers = run_onnx(int8_path, list(images.values()), head)
    per_batch = {
        name: {
            "batch_size": int(images[name].shape[0]),
            **compare(reference.outputs[name], got, head, post, truncated, gate.match_iou),
        }
        for name, got in zip(images, int8_out, strict=True)
    }
    total = sum(b["detections_reference"] for b in per_batch.values())
    matched = sum(b["detections_matched"] for b in per_batch.values())
    record: dict[str, Any] = {
        "precision": "int8",
        "reference": "fp32 export",
        "batches": per_batch,
        "providers": providers,
        "detections_reference": total,
        "detections_matched": matched,
        "agreement": matched / total if total else None,
        "tolerance": {
            "min_agreement": gate.min_agreement,
            "match_iou": gate.match_iou,
            "max_map_drop_points": gate.max_map_drop,
            "min_detections": gate.min_detections,
        },
        "postprocess": {"conf": post.conf, "iou": post.iou, "max_det": post.max_det},
    }
    failures = []
    if total < gate.min_detections:
        failures.append(
            f"the FP32 model detects only {total} objects in the validation images (< "
            f"{gate.min_detections}): too few to judge; calibrate on images of the model's domain "
            "or give --val-data"
        )
    elif total and matched / total < gate.min_agreement:
        failures.append(f"detection agreement with FP32 {matched / total:.4f} < {gate.min_agreement}")
    if reference.map is not None and reference.val_data is not None:
        int8_map = _dataset_map(int8_path, head, img_size, class_names, reference.val_data)
        drop = (reference.map["map50_95"] - int8_map["map50_95"]) * 100
        record["map"] = {
            "fp32": reference.map,
            "int8": int8_map,
            "data": str(reference.val_data),
            "split": "val",
            "drop_points": drop,
        }
        if drop > gate.max_map_drop:
            failures.append(
                f"mAP@0.5:0.95 drops {drop:.2f} points (> {gate.max_map_drop}) on {reference.val_data}"
            )
    record["passed"] = not failures
    if failures:
        record["failure"] = "; ".join(failures)
        raise ValidationFailed(f"int8 ONNX out of tolerance: {record['failure']}")
    return record


def _dataset_map(path: Path, head: Head, img_size: int, class_names: list[str], data: Path) -> dict[str, Any]:
    """mAP of one ONNX file on `data`'s val split, as `yolor eval` measures it."""
    from train.eval_model import dataset_map, onnx_file_predictor

    metrics = dataset_map(onnx_file_predictor(path, head, img_size), img_size, class_names, data)
    return {k: metrics[k] for k in ("map50", "map50_95", "images")}
