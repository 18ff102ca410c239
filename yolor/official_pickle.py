"""Read official paper-branch checkpoints (a pickled `models.yolo.Model`) without the official code and
without executing pickled code.

The file is opened with torch's `weights_only` unpickler, which only rebuilds tensors and plain
containers. The official classes (and the torch.nn modules they contain) are allow-listed as *inert
placeholders*: instances get their pickled `__dict__` and nothing else, no method of theirs ever runs.
Any other global in the file (a function, an unknown class) makes torch refuse the file.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

# fmt: off
_OFFICIAL = {
    "models.yolo": ("Model", "IDetect", "Detect"),
    "models.common": (
        "Conv", "Bottleneck", "BottleneckCSP", "BottleneckCSPF", "BottleneckCSP2", "SPP", "SPPCSP",
        "DownC", "DownD", "ReOrg", "Concat", "ImplicitA", "ImplicitM", "DWT", "Focus", "MP",
    ),
    "models.experimental": ("MixConv2d", "CrossConv", "C3"),
    # The official DWT wraps this when pytorch_wavelets is installed (its state: 4 filter buffers).
    "pytorch_wavelets.dwt.transform2d": ("DWTForward",),
}
_TORCH_NN = {
    "torch.nn.modules.conv": ("Conv2d",),
    "torch.nn.modules.batchnorm": ("BatchNorm2d", "SyncBatchNorm"),
    "torch.nn.modules.activation": ("SiLU", "LeakyReLU", "ReLU", "Hardswish", "Sigmoid", "Mish"),
    "torch.nn.modules.linear": ("Identity",),
    "torch.nn.modules.container": ("Sequential", "ModuleList"),
    "torch.nn.modules.pooling": ("MaxPool2d", "AvgPool2d"),
    "torch.nn.modules.upsampling": ("Upsample",),
}
# fmt: on


class InertModule:
    """Stand-in for a pickled nn.Module: holds its state, runs nothing."""

    official_name = ""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def children(self) -> OrderedDict[str, Any]:
        return self.__dict__.get("_modules") or OrderedDict()


def _placeholders() -> list[tuple[type, str]]:
    out = []
    for table in (_OFFICIAL, _TORCH_NN):
        for module, names in table.items():
            for name in names:
                full = f"{module}.{name}"
                out.append((type(name, (InertModule,), {"official_name": full}), full))
    return out


def _numpy_globals() -> list[tuple[Any, str]]:
    """Numpy arrays and scalars (official checkpoints keep e.g. `best_fitness` as an ndarray), under
    both the numpy 1 and numpy 2 module paths. Rebuilding them runs no pickled code."""
    multiarray = np._core.multiarray  # type: ignore[attr-defined]
    out: list[tuple[Any, str]] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(multiarray._reconstruct, f"{mod}._reconstruct"), (multiarray.scalar, f"{mod}.scalar")]
    for t in (np.bool_, np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64):
        dtype_cls = type(np.dtype(t))
        out.append((dtype_cls, f"numpy.dtypes.{dtype_cls.__name__}"))
    return out


_PLACEHOLDERS: list[tuple[Any, str]] = [*_placeholders(), *_numpy_globals()]


def load_checkpoint_object(path: str) -> Any:
    """torch.load with weights_only=True, official YOLOR module classes allowed as inert placeholders.

    Raises pickle.UnpicklingError (from torch) for anything else the file references.
    """
    with torch.serialization.safe_globals(list(_PLACEHOLDERS)):
        return torch.load(path, map_location="cpu", weights_only=True)


def inert_state_dict(root: InertModule) -> OrderedDict[str, torch.Tensor]:
    """The state dict an nn.Module tree would produce (parameters, then persistent buffers, then
    children, in registration order), read from placeholder attributes."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()

    def walk(node: InertModule, prefix: str) -> None:
        state = node.__dict__
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, t in (state.get(group) or {}).items():
                if t is not None and name not in skip:
                    out[prefix + name] = t.detach()
        for name, child in node.children().items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    return out


def inert_class_names(root: InertModule) -> set[str]:
    """The official names (`models.common.DWT`, ...) of every placeholder in the tree."""
    names = {root.official_name}
    for child in root.children().values():
        if child is not None:
            names |= inert_class_names(child)
    return names


def is_inert(obj: Any) -> bool:
    return isinstance(obj, InertModule)
