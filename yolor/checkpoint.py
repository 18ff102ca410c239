"""Load YOLOR checkpoints (official main branch, official paper branch, ours) and save ours.

Conversion from official layouts: both official branches and our modules register parameters in the
same order (each of our blocks mirrors the official registration order), so official entries, sorted by
their top-level layer index, pair one-to-one with our state-dict entries. Every pair is checked for
shape, and the arch is detected as the registered net whose shape sequence matches the checkpoint.

yolor-ssss-dwt and yolor-ssss-s2d have the same tensors; what tells them apart is what the official code
computes for the file. Official code with pytorch_wavelets installed gives each `DWT` a `DWTForward`
child whose four filter buffers are saved with the weights (in a pickled model and in its state dict):
such a file is dwt. Without pytorch_wavelets the official `DWT` is ReOrg and saves nothing extra, so a
file without those buffers (a bare state dict, or a pickle whose `DWT` modules have no `DWTForward`) is
run by the official code as ReOrg: it loads as s2d. `arch="yolor-ssss-dwt"` overrides either way.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from yolor.archs.specs import ARCHS, ArchSpec, Scaling, get_spec
from yolor.model import YOLOR
from yolor.official_pickle import inert_class_names, inert_state_dict, is_inert, load_checkpoint_object

FORMAT = "yolor-serving/1"
_ANCHOR_SUFFIXES = (".anchors", ".anchor_grid")
_WAVELET_FILTER = re.compile(r"\.xfm\.h[01]_(col|row)$")  # pytorch_wavelets DWTForward buffers
_log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is refused, or matches no known YOLOR net."""


StateDict = Mapping[str, torch.Tensor]


def _read(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        return load_checkpoint_object(str(p))
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if not found:  # not a pickle we can parse at all
            raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({e})".split("\n")[0]) from None
        what = found.group(1)
        raise CheckpointError(
            f"{p}: refused to load: it references {what}, which is neither tensor data nor an official "
            "YOLOR module. Nothing in it was executed."
        ) from None
    except Exception as e:  # corrupt zip, truncated file, not a torch file at all
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _layer_index(key: str) -> int:
    return int(key.split(".")[1])


def _official_entries(sd: StateDict) -> list[tuple[str, torch.Tensor]]:
    """Official entries minus anchors and wavelet filters, in layer order (stable within a layer)."""
    items = [(k, v) for k, v in sd.items() if not (k.endswith(_ANCHOR_SUFFIXES) or _WAVELET_FILTER.search(k))]
    return sorted(items, key=lambda kv: _layer_index(kv[0]))


def _excluded_stem(sd: StateDict) -> str:
    """The SSSS stem the file cannot be (see the module docstring)."""
    return "s2d" if any(_WAVELET_FILTER.search(k) for k in sd) else "dwt"


def _our_entries(model: YOLOR) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in model.state_dict().items() if k != "anchors"]


def _shapes_match(model: YOLOR, official: list[tuple[str, torch.Tensor]]) -> bool:
    ours = _our_entries(model)
    return len(ours) == len(official) and all(
        o.shape == t.shape for (_, o), (_, t) in zip(ours, official, strict=True)
    )


def _infer_nc(official: list[tuple[str, torch.Tensor]], num_anchors: int = 3) -> int:
    """Classes from the last prediction conv (the only convs with a bias): na * (5 + nc) outputs."""
    weights = dict(official)
    biases = [v for k, v in official if k.endswith(".bias") and weights.get(k[:-4] + "weight", v).ndim == 4]
    if not biases:
        raise CheckpointError("no detection head found in checkpoint")
    n = biases[-1].numel()
    if n % num_anchors or n // num_anchors <= 5:
        raise CheckpointError(f"detection head has {n} outputs, not {num_anchors} x (5 + nc)")
    return n // num_anchors - 5


def _official_anchors(sd: StateDict, spec: ArchSpec) -> torch.Tensor:
    """Paper checkpoints keep (possibly auto-anchor-evolved) anchors in the state dict; main ones don't."""
    shape = (spec.num_levels, spec.num_anchors, 2)
    for key, value in sd.items():
        if key.endswith(".anchor_grid"):
            return value.float().reshape(shape)
    for key, value in sd.items():
        if key.endswith(".anchors"):  # stored divided by stride
            strides = torch.tensor(spec.strides, dtype=torch.float32).view(-1, 1, 1)
            return value.float().reshape(shape) * strides
    return torch.tensor(spec.anchors, dtype=torch.float32)


def _match_arch(
    official: list[tuple[str, torch.Tensor]],
    branch: str,
    nc: int,
    arch: str | None,
    yaml_scaling: Scaling | None,
    excluded_stem: str,
) -> tuple[ArchSpec, Scaling]:
    if arch:
        names = [arch]
    else:
        names = [n for n, s in ARCHS.items() if s.branch == branch and s.stem != excluded_stem]
    for name in names:
        spec = get_spec(name)
        # A paper yaml states absolute multipliers; ours are relative to the arch's own.
        sc = (
            Scaling(yaml_scaling.depth / spec.depth_multiple, yaml_scaling.width / spec.width_multiple)
            if yaml_scaling
            else Scaling()
        )
        with torch.device("meta"):
            candidate = YOLOR(spec, nc, sc)
        if _shapes_match(candidate, official):
            return spec, sc
    what = f"arch {arch!r}" if arch else f"any {branch}-branch arch ({', '.join(names)})"
    raise CheckpointError(f"checkpoint tensors (nc={nc}) do not match {what}")


def _from_official(
    sd: StateDict, branch: str, arch: str | None, names: list[str] | None, yaml_scaling: Scaling | None
) -> YOLOR:
    official = _official_entries(sd)
    nc = _infer_nc(official)
    spec, sc = _match_arch(official, branch, nc, arch, yaml_scaling, _excluded_stem(sd))
    if names is not None and len(names) != nc:
        names = None
    anchors = _official_anchors(sd, spec)
    with torch.device("meta"):  # weights come from the checkpoint: skip the random init
        model = YOLOR(spec, nc, sc, class_names=names, anchors=anchors)
    converted = OrderedDict(
        (ours, t.float() if t.is_floating_point() else t)
        for (ours, _), (_, t) in zip(_our_entries(model), official, strict=True)
    )
    converted["anchors"] = anchors
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def _paper_scaling(model_obj: Any) -> Scaling | None:
    """Absolute multipliers from the pickled model's yaml dict, if it has one."""
    cfg = getattr(model_obj, "yaml", None)
    if isinstance(cfg, dict) and "width_multiple" in cfg:
        return Scaling(float(cfg.get("depth_multiple", 1.0)), float(cfg["width_multiple"]))
    return None


def _names(obj: Any) -> list[str] | None:
    names = obj.get("names") if isinstance(obj, dict) else getattr(obj, "names", None)
    if isinstance(names, dict):  # {id: name}
        names = [names[k] for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _from_ours(ckpt: Mapping[str, Any], arch: str | None) -> YOLOR:
    if arch is None and ckpt.get("arch") not in ARCHS:
        raise CheckpointError(f"checkpoint names arch {ckpt.get('arch')!r}, which is not registered")
    spec = get_spec(arch or ckpt["arch"])  # an explicit unknown arch: UnknownArch
    sd = ckpt.get("state_dict")
    if not isinstance(sd, Mapping) or "anchors" not in sd:
        raise CheckpointError("checkpoint has no state_dict with anchors (not written by save_checkpoint?)")
    try:
        model = YOLOR(
            spec,
            int(ckpt["nc"]),
            Scaling(ckpt["depth"], ckpt["width"]),
            ckpt["class_names"],
            anchors=sd["anchors"],
        )
        model.load_state_dict(sd, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint of {ckpt['arch']} does not fit arch {spec.name!r}: {e}") from None
    model.input_size = int(ckpt.get("input_size") or spec.input_size)
    return model.eval()


def load_model(path: str | os.PathLike[str], arch: str | None = None) -> YOLOR:
    """Load an eval-mode YOLOR from any supported checkpoint; `arch` overrides detection.

    Accepts: our checkpoints (`save_checkpoint`); official main-branch checkpoints (dict whose `model`
    is a `module_list.N.*` state dict); official paper-branch checkpoints (dict whose `model` is a
    pickled `models.yolo.Model`, read inertly, fp16 or SyncBatchNorm included) or their state dicts
    (`model.N.*`). Class names come from the checkpoint when present, else COCO-80 for 80 classes.
    Sets `model.input_size` (the checkpoint's, else the arch's default).
    """
    obj = _read(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _from_ours(obj, arch)
    inner = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if inner is None and isinstance(obj, Mapping):
        inner = obj.get("ema")
    if is_inert(inner):
        names = _names(inner) or _names(obj)
        sd = inert_state_dict(inner)
        if arch is None and _excluded_stem(sd) == "dwt" and "models.common.DWT" in inert_class_names(inner):
            _log.warning(
                "%s: its DWT modules hold no pytorch_wavelets DWTForward, so the official code that saved "
                "it ran them as ReOrg: loading it as yolor-ssss-s2d (arch yolor-ssss-dwt for the Haar "
                "transform)",
                path,
            )
        model = _from_official(sd, "paper", arch, names, _paper_scaling(inner))
    elif _is_state_dict(inner):
        first = next(iter(inner))
        if first.startswith("module_list."):
            model = _from_official(inner, "main", arch, _names(obj), None)
        elif first.startswith("model."):
            model = _from_official(inner, "paper", arch, _names(obj), None)
        else:
            raise CheckpointError(
                f"{path}: state dict keys ({first!r}, ...) are not an official YOLOR layout"
            )
    else:
        raise CheckpointError(f"{path}: no YOLOR model found (expected a state dict or official model)")
    return model


def save_checkpoint(
    model: YOLOR,
    path: str | os.PathLike[str],
    input_size: int | None = None,
    *,
    half: bool = False,
    **extra: Any,
) -> None:
    """Write our format: plain tensors and data only, loadable with `torch.load(weights_only=True)`.

    ``half=True`` stores the floating-point weights as FP16 (half the file, as the official
    ``strip_optimizer`` does); anchors stay FP32. Loading casts back to an FP32 model."""

    def stored(name: str, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().cpu()
        if half and value.is_floating_point() and name != "anchors":
            return value.half()
        return value

    ckpt = {
        "format": FORMAT,
        "arch": model.arch,
        "nc": model.nc,
        "depth": model.scaling.depth,
        "width": model.scaling.width,
        "class_names": list(model.class_names),
        "input_size": int(input_size or model.input_size),
        "state_dict": {k: stored(k, v) for k, v in model.state_dict().items()},
        **extra,
    }
    torch.save(ckpt, Path(path))
