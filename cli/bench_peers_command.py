"""`yolor bench peers`: `yolor serve` against LitServe, Ray Serve, BentoML and MLServer on the same
model, load and machine (bench/peers/)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from cli.arguments import float_in, int_at_least
from cli.errors import CommandError

log = logging.getLogger("yolor.bench")


def _names(known: list[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(known)} (got {text!r})")
        return names

    return parse


def _cmd_peers(args: argparse.Namespace) -> int:
    from bench.peers import report
    from bench.peers.regimes import REGIMES
    from bench.peers.run import PeersConfig, run_regime
    from bench.server import ServerFailed
    from service.settings import DEMO_MODEL_DIR

    signal.signal(signal.SIGTERM, _interrupt)  # a killed run still ends every server it started
    regimes = [REGIMES[k] for k in args.regimes]
    if any(r.model == "p6" for r in regimes) and args.p6_model is None:
        raise CommandError("the cpu-p6 regime needs --p6-model DIR (a yolor_p6 export at 640)")
    config = PeersConfig(
        model_dir=args.model or DEMO_MODEL_DIR,
        p6_model=args.p6_model,
        peers=tuple(args.peers),
        rounds=args.rounds,
        seconds=args.seconds,
        warmup_s=args.warmup,
        limits=args.limits,
    )
    summaries, raw = [], []
    for regime in regimes:
        log.info("regime %s: %s", regime.key, regime.title)

        def progress(run: Any) -> None:
            best = run.best
            log.info(
                "  round %d %s: %s", run.round, report.title(run.server),
                f"{best.images_per_s:.1f} images/s at concurrency {best.concurrency}" if best else "done",
            )  # fmt: skip

        try:
            runs = run_regime(regime, config, progress)
        except ServerFailed as e:
            raise CommandError(str(e)) from None
        summary = report.regime_summary(runs)
        summaries.append(summary)
        raw.append(runs.to_dict())
        sys.stdout.write(report.markdown([summary]) + "\n")
        sys.stdout.flush()
        if args.out:
            _write_peers(args.out, summaries, raw, config)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _write_peers(out: Path, summaries: list[dict[str, Any]], raw: list[dict[str, Any]], config: Any) -> None:
    """peers.json (host, config, summaries, every run), peers.md and peers.png, rewritten after each
    regime so that a stopped run keeps what it measured."""
    from bench.host import host_info
    from bench.peers import report
    from cli.bench_command import _write

    data = {
        "host": host_info(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in config.__dict__.items()},
        "summaries": summaries,
        "runs": raw,
    }
    _write(out, "peers", data, report.markdown(summaries))
    report.plot(summaries, out / "peers.png")


def register(bench: argparse._SubParsersAction) -> None:
    from bench.peers.regimes import REGIMES
    from bench.peers.registry import DEFAULT_PEERS, PEERS

    p = bench.add_parser(
        "peers",
        help="yolor serve against LitServe, Ray Serve, BentoML, MLServer on the same model and load",
        description="Serves the model with `yolor serve` and with each peer (its own batching and its "
        "documented way to scale on one host, the same decode, letterbox, ONNX Runtime inference and "
        "NMS per image), each peer in its own venv under .venv/cache/peers (installed on first use), "
        "checks every peer answers the same detections as ours, then measures each regime in "
        "alternating rounds. Prints Markdown per regime; --out writes peers.json, peers.md, peers.png.",
    )
    default = ",".join(DEFAULT_PEERS)
    p.add_argument("--peers", type=_names(list(PEERS)), default=list(DEFAULT_PEERS),
                   help=f"comma-separated, of {', '.join(PEERS)} (default: {default})")  # fmt: skip
    p.add_argument("--regimes", type=_names(list(REGIMES)), default=[k for k in REGIMES if k != "cpu-p6"],
                   help=f"comma-separated, of {', '.join(REGIMES)} (default: all but cpu-p6)")  # fmt: skip
    p.add_argument("--model", type=Path, help="model directory (default: the demo model)")
    p.add_argument("--p6-model", type=Path, help="a yolor_p6 model directory at 640, for the cpu-p6 regime")
    p.add_argument("--rounds", type=int_at_least(1), default=3, help="alternating rounds (default 3)")
    p.add_argument("--seconds", type=float_in(0, low_open=True), default=6.0, help="measured s per level")
    p.add_argument("--warmup", type=float_in(0), default=2.0, help="unrecorded s before each level")
    p.add_argument("--no-limits", dest="limits", action="store_false",
                   help="skip measuring the machine's limit per regime")  # fmt: skip
    p.add_argument("--out", type=Path, help="write peers.json, peers.md and peers.png here")
    p.set_defaults(func=_cmd_peers)
