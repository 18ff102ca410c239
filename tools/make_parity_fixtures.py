"""Generate numeric parity fixtures by *running* the official YOLOR code (never copied into this repo).

Usage (from the repository root):

    python tools/make_parity_fixtures.py --main-root /work/ref/main --paper-root /work/ref/paper \
        --out tests/fixtures/parity

The official `main` (Darknet cfg) and `paper` (yaml Model) branches both ship top-level packages named
`models` and `utils`, so every architecture is built in its own subprocess with only that branch root on
`sys.path`. Optional heavy dependencies the official code imports at module level (torchvision,
pycocotools, matplotlib, ...) are replaced by inert stub modules when they are missing; `mish_cuda`,
`pytorch_wavelets` and `thop` are forced to raise ImportError so the official pure-torch fallbacks
(Mish, DWT) are used and no FLOP counting is attempted -- except for `yolor-ssss-dwt` and its tiny
checkpoint, which need the real transform: there pytorch_wavelets must be importable (it is not a
dependency of ours; e.g. `pip install --target /tmp/pwlib --no-deps pytorch_wavelets PyWavelets` and
PYTHONPATH=/tmp/pwlib), and its filter buffers keep their real values like the anchors.

Each architecture gets deterministic weights from `tools.parity.parity_state_dict` (anchors keep their
real values), is run in eval mode on a fixed 64x64 input, and its outputs are written to
`<out>/<arch>.npz` with the key list and metadata in `<out>/<arch>.json`.

Tiny paper-branch checkpoints in the official on-disk training format (EMA model, stripped to FP16 as
the official `strip_optimizer` does) are written to `<out>/tiny_paper_official.pt` (yolor-p6 yaml) and
`<out>/tiny_dwt_official.pt` (yolor-ssss-dwt yaml, pickling pytorch_wavelets' DWTForward), with
reference outputs computed from their FP16 weights cast back to float32 in `<out>/<name>.npz`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.abc
import importlib.machinery
import importlib.util
import json
import pickletools
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

REPO_ROOT = Path(__file__).resolve().parents[1]

MAIN_ARCHS = ("yolor_p6", "yolor_w6", "yolor_csp", "yolor_csp_x")
PAPER_ARCHS = ("yolor-p6", "yolor-w6", "yolor-e6", "yolor-d6", "yolor-ssss-dwt", "yolor-ssss-s2d")
EXPECTED_PARAMS = {
    "yolor_p6": 37_265_016,
    "yolor-p6": 37_270_264,
    "yolor_w6": 79_873_400,
    "yolor-w6": 79_880_952,
    "yolor-e6": 115_909_400,
    "yolor-d6": 151_782_680,
    "yolor_csp": 52_923_994,
    "yolor_csp_x": 99_754_058,
    "yolor-ssss-dwt": 9_216_634,
    "yolor-ssss-s2d": 9_216_634,
}
OFFICIAL_COMMITS = {
    "main": "3ca250ae2247ca13911fa498cbe8e2c9b6bab5b0",
    "paper": "10efdf7d4aca04abc61cd3badbf2f0f88bf7a954",
}
INPUT_SIZE = 64
nameS = ["circle", "square", "triangle"]
# name -> (official yaml, absolute depth and width multipliers)
TINY = {
    "tiny_paper_official": ("yolor-p6", 0.33, 0.0625),
    "tiny_dwt_official": ("yolor-ssss-dwt", 0.33, 0.03125),
}
# Jobs that run the real wavelet transform (pytorch_wavelets importable, not blocked).
WAVELET_JOBS = ("yolor-ssss-dwt", "tiny_dwt_official")

# Must fail to import so the official code falls back to its pure-torch implementations.
BLOCKED_MODULES = frozenset({"mish_cuda", "pytorch_wavelets", "thop", "wandb"})
WAVELET_MODULES = frozenset({"pytorch_wavelets", "pywt"})
# Replaced by inert stubs when not installed (only imported at module level, never used by models).
STUB_CANDIDATES = (
    "torchvision",
    "pycocotools",
    "matplotlib",
    "seaborn",
    "pandas",
    "scipy",
    "tqdm",
    "PIL",
    "cv2",
)


# --------------------------------------------------------------------------------------------------
# Import machinery (worker side)
# --------------------------------------------------------------------------------------------------
class _StubModule(types.ModuleType):
    """A module whose every public attribute is a MagicMock."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []  # a package, so stubbed submodules import too
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _OfficialImportHook(importlib.abc.MetaPathFinder):
    def __init__(self, stub_roots: set[str], blocked: frozenset[str]) -> None:
        self.stub_roots = stub_roots
        self.blocked = blocked
        self.loader = _StubLoader()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        root = fullname.partition(".")[0]
        if root in self.blocked:
            raise ImportError(f"{fullname} is deliberately unavailable for parity fixtures")
        if root in self.stub_roots:
            return importlib.machinery.ModuleSpec(fullname, self.loader, is_package=True)
        return None


def install_import_hook(wavelets: bool) -> set[str]:
    """Block and stub modules for the official code; `wavelets`: leave pytorch_wavelets importable."""
    blocked = BLOCKED_MODULES - WAVELET_MODULES if wavelets else BLOCKED_MODULES
    if wavelets and importlib.util.find_spec("pytorch_wavelets") is None:
        raise SystemExit(
            "the dwt fixtures need pytorch_wavelets: pip install --target /tmp/pwlib --no-deps "
            "pytorch_wavelets PyWavelets 'setuptools<81', then PYTHONPATH=/tmp/pwlib"
        )
    stub_roots = {name for name in STUB_CANDIDATES if importlib.util.find_spec(name) is None}
    sys.meta_path.insert(0, _OfficialImportHook(stub_roots, blocked))
    return stub_roots


def prepare_sys_path(branch_root: Path) -> None:
    for name in [m for m in sys.modules if m.partition(".")[0] in ("models", "utils")]:
        del sys.modules[name]
    sys.path.insert(0, str(branch_root))
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))


# --------------------------------------------------------------------------------------------------
# Worker helpers
# --------------------------------------------------------------------------------------------------
def make_input(spec: Any = None) -> Any:
    import torch

    from tools.parity import REFERENCE_INPUT, parity_input

    return torch.from_numpy(parity_input(spec or REFERENCE_INPUT))


def fixed_keys(state_dict: dict[str, Any]) -> list[str]:
    """Entries that keep their real values: anchors and pytorch_wavelets' filter buffers."""
    from tools.parity import ANCHOR_SUFFIXES

    return [k for k in state_dict if k.rsplit(".", 1)[-1] in ANCHOR_SUFFIXES or ".xfm." in k]


def load_parity_weights(model: Any) -> tuple[list[list[Any]], dict[str, Any], dict[str, Any]]:
    """Load deterministic weights (`fixed_keys` keep real values) and calibrate BatchNorm statistics on a
    separate input; return key list, the fixed entries and the calibration."""
    import torch

    from tools.parity import CALIBRATION_INPUT, calibrate_batchnorm, parity_state_dict

    sd = model.state_dict()
    keys = [[k, [int(s) for s in v.shape]] for k, v in sd.items()]
    fixed = {k: sd[k].detach().cpu().numpy().copy() for k in fixed_keys(sd)}
    values = parity_state_dict([(k, v.shape) for k, v in sd.items()], fixed=fixed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=True)
    calibration = calibrate_batchnorm(model, make_input(CALIBRATION_INPUT))
    return keys, fixed, calibration


def bn_summary(model: Any) -> dict[str, int]:
    import torch

    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            tag = f"{type(m).__name__}(eps={m.eps:g}, momentum={m.momentum:g})"
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Like `np.savez_compressed`, but LZMA-compressed members (~20% smaller; `np.load` reads it)."""
    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)


def leaf_types(model: Any) -> dict[str, int]:
    """Counts of parameter-free leaf module types (activations, ReOrg/DWT, upsample, ...)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is None:
            tag = f"{type(m).__module__}.{type(m).__name__}"
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def run_forward(model: Any, x: Any) -> tuple[Any, list[Any]]:
    import torch

    model.eval()
    with torch.no_grad():
        out = model(x)
    decoded, raw = out[0], list(out[1])
    return decoded, raw


def output_arrays(x: Any, decoded: Any, raw: list[Any]) -> dict[str, Any]:
    import numpy as np

    arrays = {"decoded": decoded.numpy().astype(np.float32)}
    for i, r in enumerate(raw):
        arrays[f"raw_{i}"] = r.numpy().astype(np.float32)
    return arrays


def output_stats(arrays: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    raw = np.concatenate([v.ravel() for k, v in arrays.items() if k.startswith("raw_")])
    dec = arrays.get("decoded", raw)
    return {
        "finite": bool(np.isfinite(raw).all() and np.isfinite(dec).all()),
        "raw_min": float(raw.min()),
        "raw_max": float(raw.max()),
        "raw_mean": float(raw.mean()),
        "raw_std": float(raw.std()),
        "raw_frac_abs_gt_8": float((np.abs(raw) > 8).mean()),
        "raw_shapes": [list(v.shape) for k, v in arrays.items() if k.startswith("raw_")],
        "decoded_shape": list(dec.shape),
    }


def build_official(branch: str, root: Path, arch: str) -> Any:
    if branch == "main":
        from models.models import Darknet  # type: ignore[import-not-found]

        return Darknet(str(root / "cfg" / f"{arch}.cfg"))
    from models.yolo import Model  # type: ignore[import-not-found]

    return Model(str(root / "models" / f"{arch}.yaml"))


def worker_arch(branch: str, root: Path, arch: str, out_dir: Path) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    model = build_official(branch, root, arch).eval()
    t_build = time.perf_counter() - t0
    param_count = sum(p.numel() for p in model.parameters())
    bn = bn_summary(model)
    from tools.parity import DECODED_ARCHS, WIDE_INPUT

    keys, fixed, calibration = load_parity_weights(model)
    t_load = time.perf_counter() - t0 - t_build
    x = make_input()
    decoded, raw = run_forward(model, x)
    t_fwd = time.perf_counter() - t0 - t_build - t_load
    arrays = output_arrays(x, decoded, raw)
    # A wide input gives the top level several cells, so SPP pooling order and padding matter; only the
    # coarser levels are stored to keep the file small (they all pass through SPP).
    _, raw_wide = run_forward(model, make_input(WIDE_INPUT))
    for i in (len(raw_wide) - 2, len(raw_wide) - 1):
        arrays[f"wide_raw_{i}"] = raw_wide[i].numpy().astype("float32")
    if arch not in DECODED_ARCHS:
        del arrays["decoded"]

    npz_path = out_dir / f"{arch}.npz"
    save_npz(npz_path, arrays)
    meta = {
        "arch": arch,
        "branch": branch,
        "param_count": param_count,
        "keys": keys,
        "fixed": {k: v.tolist() for k, v in fixed.items()},
        "calibration": calibration,
        "input_size": INPUT_SIZE,
        "official_commit": OFFICIAL_COMMITS[branch],
        "torch": torch.__version__,
    }
    json_path = out_dir / f"{arch}.json"
    json_path.write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    extra: dict[str, Any] = {}
    if branch == "paper":
        det = model.model[-1]
        extra["stride"] = det.stride.tolist()
    else:
        extra["stride"] = [model.module_list[i].stride for i in model.yolo_layers]
    return {
        "arch": arch,
        "branch": branch,
        "param_count": param_count,
        "expected": EXPECTED_PARAMS.get(arch),
        "n_keys": len(keys),
        "bn": bn,
        "activations": leaf_types(model),
        "fixed": {k: v.tolist() for k, v in fixed.items()},
        **extra,
        "stats": output_stats(arrays),
        "npz_bytes": npz_path.stat().st_size,
        "json_bytes": json_path.stat().st_size,
        "seconds": {"build": round(t_build, 2), "load": round(t_load, 2), "forward": round(t_fwd, 2)},
    }


def pickle_globals(pt_path: Path) -> list[str]:
    """Distinct `module.name` pairs referenced by GLOBAL/STACK_GLOBAL opcodes of a torch zip checkpoint."""
    found: set[str] = set()
    with zipfile.ZipFile(pt_path) as zf:
        names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        data = zf.read(names[0])
    strings: list[str] = []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            module, name = str(arg).split(" ", 1)
            found.add(f"{module}.{name}")
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(str(arg))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return sorted(found)


def worker_tiny(root: Path, out_dir: Path, name: str) -> dict[str, Any]:
    """Tiny paper-branch checkpoint following the official train.py + strip_optimizer code path."""
    import numpy as np
    import torch
    import yaml
    from models.yolo import Model  # type: ignore[import-not-found]
    from utils.metrics import (  # type: ignore[import-not-found]
        fitness,
        fitness_ap,
        fitness_ap50,
        fitness_f,
        fitness_p,
        fitness_r,
    )
    from utils.torch_utils import ModelEMA  # type: ignore[import-not-found]

    t0 = time.perf_counter()
    yaml_name, cfg_depth, cfg_width = TINY[name]
    cfg = yaml.safe_load((root / "models" / f"{yaml_name}.yaml").read_text())
    cfg["depth_multiple"] = cfg_depth
    cfg["width_multiple"] = cfg_width
    hyp = yaml.safe_load((root / "data" / "hyp.scratch.1280.yaml").read_text())
    nc, names = len(nameS), list(nameS)

    # train.py: Model(opt.cfg, ch=3, nc=nc) from a yaml *file* (sets model.yaml_file); the edited
    # config lives in a temporary directory outside the repository only.
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / f"{yaml_name}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        model = Model(str(cfg_path), ch=3, nc=nc)
    param_count = sum(p.numel() for p in model.parameters())
    keys, fixed, _calibration = load_parity_weights(model)

    # train.py: EMA created right after the optimizer, before attributes are attached to the model.
    ema = ModelEMA(model)
    hyp["cls"] *= nc / 80.0
    model.nc = nc
    model.hyp = hyp
    model.gr = 1.0
    model.class_weights = torch.full((nc,), 1.0 / nc, dtype=torch.float64)  # labels_to_class_weights
    model.names = names
    ema.update_attr(model, include=["yaml", "nc", "hyp", "gr", "names", "stride"])
    # test.test(model=ema.ema) runs an eval forward, populating Detect.grid.
    with torch.no_grad():
        ema.ema.eval()(make_input())

    results = (0.61, 0.52, 0.55, 0.33, 0.04, 0.05, 0.006)  # P, R, mAP@.5, mAP@.5:.95, losses
    r = np.array(results).reshape(1, -1)
    ckpt = {
        "epoch": 9,
        "best_fitness": fitness(r),
        "best_fitness_p": fitness_p(r),
        "best_fitness_r": fitness_r(r),
        "best_fitness_ap50": fitness_ap50(r),
        "best_fitness_ap": fitness_ap(r),
        "best_fitness_f": fitness_f(r),
        "training_results": "results.txt contents\n",
        "model": ema.ema,
        "optimizer": None,
        "wandb_id": None,
    }
    # utils.general.strip_optimizer on the final checkpoint.
    ckpt["optimizer"] = None
    ckpt["training_results"] = None
    ckpt["epoch"] = -1
    ckpt["model"].half()
    for p in ckpt["model"].parameters():
        p.requires_grad = False
    # Keep official *config content* out of the committed file: the pickled yaml dict is cut down to
    # the fields a loader reads (the layer lists are the official yaml itself) and hyp is a stand-in.
    ckpt["model"].yaml = {k: cfg[k] for k in ("nc", "depth_multiple", "width_multiple", "anchors")}
    ckpt["model"].hyp = {"lr0": 0.01, "cls": 0.0375}
    pt_path = out_dir / f"{name}.pt"
    torch.save(ckpt, pt_path)

    ref = copy.deepcopy(ckpt["model"]).float().eval()
    x = make_input()
    decoded, raw = run_forward(ref, x)
    arrays = output_arrays(x, decoded, raw)
    npz_path = out_dir / f"{name}.npz"
    save_npz(npz_path, arrays)
    globals_ = pickle_globals(pt_path)
    meta = {
        "arch": name,
        "branch": "paper",
        "param_count": param_count,
        "nc": nc,
        "names": names,
        "depth_multiple": cfg["depth_multiple"],
        "width_multiple": cfg["width_multiple"],
        "ckpt_keys": list(ckpt),
        "pickle_globals": globals_,
        "input_size": INPUT_SIZE,
        "official_commit": OFFICIAL_COMMITS["paper"],
        "torch": torch.__version__,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    sd = ckpt["model"].state_dict()
    return {
        "arch": name,
        "param_count": param_count,
        "n_keys": len(keys),
        "ckpt_keys": list(ckpt),
        "model_attrs": sorted(k for k in vars(ckpt["model"]) if not k.startswith("_")),
        "dtypes": sorted({str(v.dtype) for v in sd.values()}),
        "fixed_after_half": {k: sd[k].float().tolist() for k in fixed},
        "bn": bn_summary(ckpt["model"]),
        "activations": leaf_types(ckpt["model"]),
        "globals": globals_,
        "stats": output_stats(arrays),
        "pt_bytes": pt_path.stat().st_size,
        "npz_bytes": npz_path.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def worker_main(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    stubs = install_import_hook(wavelets=args.arch in WAVELET_JOBS)
    root = Path(args.root).resolve()
    prepare_sys_path(root)
    out_dir = Path(args.out).resolve()
    if args.arch in TINY:
        report = worker_tiny(root, out_dir, args.arch)
    else:
        report = worker_arch(args.worker, root, args.arch, out_dir)
    report["stubbed"] = sorted(stubs)
    print("@@REPORT@@" + json.dumps(report))


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
def run_job(branch: str, root: Path, arch: str, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", branch, "--root", str(root)]
    cmd += ["--arch", arch, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    wall = time.perf_counter() - t0
    reports = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@REPORT@@")]
    if proc.returncode != 0 or not reports:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{arch}: official worker failed (rc={proc.returncode})")
    report = json.loads(reports[-1][len("@@REPORT@@") :])
    report["wall_seconds"] = round(wall, 2)
    report["notes"] = sorted({ln.strip() for ln in proc.stdout.splitlines() if "Reversing" in ln})
    return report


def summarize(report: dict[str, Any]) -> None:
    s = report["stats"]
    exp = report.get("expected")
    pc = report["param_count"]
    flag = "" if exp is None else (" OK" if pc == exp else f" MISMATCH (expected {exp:,})")
    print(f"== {report['arch']}: params {pc:,}{flag}; wall {report['wall_seconds']}s {report['seconds']}")
    print(
        f"   raw min {s['raw_min']:.3f} max {s['raw_max']:.3f} mean {s['raw_mean']:.3f} "
        f"std {s['raw_std']:.3f} |raw|>8 {s['raw_frac_abs_gt_8']:.4f} finite {s['finite']}"
    )
    print(f"   raw shapes {s['raw_shapes']} decoded {s['decoded_shape']}; BN {report['bn']}")
    if "stride" in report:
        print(f"   stride {report['stride']}")
    for k, v in report.get("fixed", {}).items():
        print(f"   {k} = {v}")
    if report["notes"]:
        print(f"   official notes {report['notes']}")
    print(f"   activations {report['activations']}")
    sizes = {k: v for k, v in report.items() if k.endswith("_bytes")}
    print(f"   sizes {sizes}; stubbed {report['stubbed']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main-root", type=Path, default=Path("/work/ref/main"))
    parser.add_argument("--paper-root", type=Path, default=Path("/work/ref/paper"))
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/parity"))
    parser.add_argument("--only", nargs="*", default=None, help="subset of arch names to (re)build")
    parser.add_argument("--worker", choices=("main", "paper"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("main", args.main_root.resolve(), a) for a in MAIN_ARCHS]
    jobs += [("paper", args.paper_root.resolve(), a) for a in PAPER_ARCHS]
    jobs += [("paper", args.paper_root.resolve(), name) for name in TINY]
    if args.only:
        jobs = [j for j in jobs if j[2] in args.only]
    mismatches = []
    for branch, root, arch in jobs:
        report = run_job(branch, root, arch, out)
        summarize(report)
        if arch in TINY:
            print(f"   ckpt keys {report['ckpt_keys']}")
            print(f"   model attrs {report['model_attrs']}; dtypes {report['dtypes']}")
            print(f"   globals {report['globals']}")
        elif report["param_count"] != report["expected"]:
            mismatches.append(arch)
    if mismatches:
        print(f"PARAM COUNT MISMATCH: {mismatches}")


if __name__ == "__main__":
    main()
