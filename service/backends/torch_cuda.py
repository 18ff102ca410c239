"""PyTorch backend: the fused YOLOR net in FP16 on a CUDA GPU, for GPU hosts without TensorRT.

The only place in `service/` that touches torch or the `yolor` package, and only inside functions:
importing this module needs neither. It returns the raw head layout `(B, N, 5 + nc)` (the model's
own eval output), whatever head the exported ONNX has; the server post-processes by `head`.

It has NOT been run in this repository's CI (no CUDA GPU there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from service.backends.base import BackendUnavailable, BaseBackend, FloatBatch

log = logging.getLogger(__name__)


class TorchCudaBackend(BaseBackend):
    def __init__(
        self, checkpoint: Path, *, input_size: int, max_batch_size: int, device: str = "cuda:0"
    ) -> None:
        try:
            import torch

            import yolor
        except ImportError as e:
            raise BackendUnavailable(f"the torch backend needs torch and the yolor package: {e}") from e
        if not torch.cuda.is_available():
            raise BackendUnavailable("the torch backend needs a CUDA GPU; torch sees none")
        torch.backends.cudnn.benchmark = True  # fixed input size: autotuned kernels pay off
        model = yolor.fuse_model(yolor.load_model(checkpoint)).eval()
        self._torch: Any = torch
        self._device = torch.device(device)
        self._model: Any = model.half().to(self._device)
        super().__init__(
            name="torch",
            precision="fp16",
            device=f"{device} ({torch.cuda.get_device_name(self._device)}, torch {torch.__version__})",
            head="raw",
            max_batch_size=max_batch_size,
            input_name="images",
            input_shape=(3, input_size, input_size),
            output_shape=(None, 5 + int(model.nc)),
        )
        log.info("torch backend: %s (%s) on %s", checkpoint, model.arch, self.device)

    def _infer(self, batch: FloatBatch) -> FloatBatch:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self._device, non_blocking=True).half()
            pred = self._model(x)
            return np.ascontiguousarray(pred.float().cpu().numpy())

    def _release(self) -> None:
        self._model = None
        self._torch.cuda.empty_cache()
