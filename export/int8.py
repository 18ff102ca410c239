"""INT8 post-training quantization of the fused FP32 export into an explicit Q/DQ ONNX graph.

Calibration runs ONNX Runtime's static quantization (`onnxruntime.quantization.quantize_static`,
QDQ format, per-channel int8 weights) on real images letterboxed by the serving code. The head's
prediction convolutions (the last convolutions of the graph) and everything after them (box decode,
top-K) stay in float: boxes and scores keep full precision. Two flavours of the same quantization:

- `onnxruntime` (CPU): uint8 activations with a zero point, int8 weights in a 7-bit range
  (`reduce_range`), the u8s8 kernels ONNX Runtime's CPU provider runs fastest (`model.int8.onnx`).
  The reduced range is for x86 CPUs without VNNI (AVX2 only), where those kernels add pairs of
  u8 x s8 products in 16 bits and saturate with full-range weights, and a model exported on one
  host may be served on such a CPU (docs/models-and-export.md, "INT8", has the measurement);
- `tensorrt`: symmetric int8 activations and weights, what TensorRT's explicit quantization needs
  (TensorRT 10/11 build INT8 layers only from Q/DQ nodes; `model.int8-tensorrt.onnx`).

`validate_int8` gates the result against the FP32 export on the same images (and on a labelled
set's mAP when one is given); the caller refuses an export out of tolerance.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx

from service.core.errors import InvalidImage, TooManyPixels
from service.core.images import decode_image
from service.processing import letterbox, to_input_tensor

log = logging.getLogger(__name__)

Int8Target = Literal["onnxruntime", "tensorrt"]
CalibMethod = Literal["minmax", "percentile", "entropy"]
INT8_TARGETS: tuple[Int8Target, ...] = ("onnxruntime", "tensorrt")
INT8_FILES: dict[Int8Target, str] = {"onnxruntime": "model.int8.onnx", "tensorrt": "model.int8-tensorrt.onnx"}
# Ops quantized between the convolutions (SiLU is Sigmoid * Mul): with all of them in int8 ONNX
# Runtime fuses each into its QLinear kernel instead of converting back to float around it.
QUANTIZED_OPS = ("Conv", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_PIXELS = 1 << 30

FloatArray = npt.NDArray[np.float32]


class CalibrationError(ValueError):
    """The calibration images cannot be read or are too few."""


@dataclass(frozen=True)
class Calibration:
    """Letterboxed calibration inputs, (1, 3, S, S) each, and where they came from."""

    tensors: list[FloatArray]
    source: str
    sha256: str  # of the image files' bytes, in the order used

    def record(self, method: CalibMethod) -> dict[str, Any]:
        return {"source": self.source, "images": len(self.tensors), "sha256": self.sha256, "method": method}


def calibration_files(source: Path, count: int) -> list[Path]:
    """The first `count` image files of a folder (sorted by name, recursively) or of a dataset
    (`dataset.json`, YOLO folder or COCO json: its train split, else its val split)."""
    if source.is_dir() and not (source / "dataset.json").is_file() and not (source / "images").is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    else:
        from train.data.datasets import DatasetError, load_dataset

        try:
            dataset = load_dataset(source, "train")
            if len(dataset) == 0:
                dataset = load_dataset(source, "val")
        except DatasetError as e:
            raise CalibrationError(f"--calib {source}: {e}") from None
        files = [record.path for record in dataset.records]
    if not files:
        raise CalibrationError(f"--calib {source}: no image files")
    return files[:count]


def load_calibration(source: Path, count: int, img_size: int, pad: int) -> Calibration:
    """Decode and letterbox the calibration images exactly as the server does."""
    files = calibration_files(source, count)
    tensors, digest = letterboxed(files, img_size, pad)
    return Calibration(tensors, str(source), digest)


def val_images(data: Path, count: int, img_size: int, pad: int) -> FloatArray:
    """The first `count` images of a labelled dataset's val split, letterboxed: (N, 3, S, S)."""
    from train.data.datasets import DatasetError, load_dataset

    try:
        files = [record.path for record in load_dataset(data, "val").records[:count]]
    except DatasetError as e:
        raise CalibrationError(f"--val-data {data}: {e}") from None
    if not files:
        raise CalibrationError(f"--val-data {data}: no val images")
    return np.concatenate(letterboxed(files, img_size, pad)[0])


def letterboxed(files: Sequence[Path], img_size: int, pad: int) -> tuple[list[FloatArray], str]:
    """(1, 3, S, S) inputs of `files` and the sha256 over their bytes' sha256s, in order."""
    digest, tensors = hashlib.sha256(), []
    for path in files:
        data = path.read_bytes()
        digest.update(hashlib.sha256(data).digest())
        try:
            image = decode_image(data, MAX_PIXELS)
        except (InvalidImage, TooManyPixels) as e:
            raise CalibrationError(f"{path}: {e.message}") from None
        tensors.append(to_input_tensor([letterbox(image, img_size, color=pad)[0]]))
    return tensors, digest.hexdigest()


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay in float: every convolution with no convolution after it (the
    head's prediction convs) and every node downstream of one (box decode, top-K)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def downstream(node: onnx.NodeProto) -> set[str]:
        seen: set[str] = set()
        stack = list(node.output)
        while stack:
            for consumer in consumers.get(stack.pop(), []):
                if consumer.name not in seen:
                    seen.add(consumer.name)
                    stack.extend(consumer.output)
        return seen

    by_name = {node.name: node for node in model.graph.node}
    tail: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Conv":
            after = downstream(node)
            if not any(by_name[name].op_type == "Conv" for name in after):
                tail |= after | {node.name}
    return sorted(tail)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over the letterboxed tensors."""

    def __init__(self, input_name: str, tensors: Sequence[FloatArray]) -> None:
        self._feeds: Iterator[dict[str, FloatArray]] = iter([{input_name: t} for t in tensors])

    def get_next(self) -> dict[str, FloatArray] | None:
        return next(self._feeds, None)


def quantize(
    fp32_path: Path, out_path: Path, calibration: Calibration, method: CalibMethod, target: Int8Target
) -> dict[str, Any]:
    """Write the INT8 Q/DQ model of `fp32_path` to `out_path`; returns its quantization record."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    symmetric = target == "tensorrt"
    with tempfile.TemporaryDirectory(prefix="yolor-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference + constant folding, as the quantizer expects (the symbolic pass does
        # not know the top-K tail's shapes and is not needed: the input shape is all it would add).
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = float_tail(onnx.load(str(prepared)))
        calibrator_output = io.StringIO()  # the calibrators print their progress: to the debug log
        with contextlib.redirect_stdout(calibrator_output):
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader(input_name, calibration.tensors),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=excluded,
                per_channel=True,
                reduce_range=not symmetric,  # u8s8 without VNNI saturates otherwise (module docstring)
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[method],
                extra_options={
                    "ActivationSymmetric": symmetric,
                    "WeightSymmetric": True,
                    "CalibTensorRangeSymmetric": symmetric,
                },
            )
        log.debug("onnxruntime quantization: %s", calibrator_output.getvalue().strip())
    return {
        "target": target,
        "activations": "int8 symmetric" if symmetric else "uint8 asymmetric",
        "weights": "int8 symmetric per channel" + ("" if symmetric else ", 7-bit range"),
        "quantized_ops": list(QUANTIZED_OPS),
        "float_nodes": len(excluded),
        **calibration.record(method),
    }
