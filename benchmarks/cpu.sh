#!/usr/bin/env bash
# Every CPU number in docs/benchmarks.md, on this machine: the demo model and yolor_p6 (random
# weights: speed does not depend on them) at 640 and 1280, served and bare, and the eager PyTorch
# forward beside our export. Its run time is in docs/benchmarks.md ("Benchmarks"); run it on an
# otherwise idle machine (the load generator shares it, and reports its own CPU time).
#
#   benchmarks/cpu.sh [OUT_DIR]        (default benchmarks/results/cpu; needs `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/cpu}
BIN=${BIN:-.venv/bin}
MODELS=${MODELS:-$(mktemp -d)}
mkdir -p "$OUT"

# The demo model: 256 px, max batch 8; batching on and off.
"$BIN/yolor" bench serve --model service/demo_model --device cpu --unbatched \
    --seconds 10 --rounds 3 --round-seconds 6 --out "$OUT/demo"
"$BIN/yolor" bench torch service/demo_model/checkpoint.pt --batch 1,8 --out "$OUT/torch-demo"
# What reduced JPEG decoding (on by default) does to the demo model's mAP, with and without its margin.
"$BIN/python" benchmarks/reduced_decode.py --images 300 --out "$OUT/reduced-decode-margin"

# yolor_p6 with random weights, exported at 640 (max batch 4) and 1280 (max batch 2).
if [ ! -f "$MODELS/p6-1280/model.json" ]; then  # MODELS=DIR reuses an earlier run's exports
    "$BIN/python" - "$MODELS/yolor_p6.pt" <<'PY'
import sys, torch, yolor
torch.manual_seed(0)
yolor.save_checkpoint(yolor.build_model("yolor_p6", nc=80), sys.argv[1], input_size=1280)
PY
    "$BIN/yolor" export "$MODELS/yolor_p6.pt" --out "$MODELS/p6-640" --img-size 640 --max-batch 4
    "$BIN/yolor" export "$MODELS/yolor_p6.pt" --out "$MODELS/p6-1280" --img-size 1280 --max-batch 2
fi
"$BIN/yolor" bench serve --model "$MODELS/p6-640" --device cpu --concurrency 1,2,4,8,16 \
    --seconds 30 --warmup 5 --bare-seconds 10 --rounds 2 --round-seconds 20 --out "$OUT/p6-640"
"$BIN/yolor" bench serve --model "$MODELS/p6-1280" --device cpu --concurrency 1,2,4,8 \
    --seconds 40 --warmup 8 --bare-seconds 15 --rounds 2 --round-seconds 25 --out "$OUT/p6-1280"
"$BIN/yolor" bench torch "$MODELS/yolor_p6.pt" --img-size 640 --batch 1,4 --seconds 10 --out "$OUT/torch-p6-640"
"$BIN/yolor" bench torch "$MODELS/yolor_p6.pt" --img-size 1280 --batch 1 --seconds 15 --out "$OUT/torch-p6-1280"

# Sliced inference against SAHI (sahi only for this benchmark: not a project dependency), and
# zero-downtime reloads under load (issue 15).
"$BIN/python" -m pip install -q --no-deps sahi==0.12.8 shapely
"$BIN/python" benchmarks/tiling.py --out "$OUT/tiling" --images 24
"$BIN/python" benchmarks/reload.py --out "$OUT/reload"
# The batcher's ready batch with a backend that leaves the CPU free (a GPU stand-in).
"$BIN/python" benchmarks/ready_batch.py --rounds 4 --out "$OUT/ready-batch"
# Tracking against the `trackers` package's ByteTrack, which runs in its own venv (made on first use:
# .venv/cache/trackers-venv) because it needs opencv-python (issue 27).
"$BIN/python" benchmarks/tracking.py --clips 50 --out "$OUT/tracking"
# Against LitServe, Ray Serve, BentoML and MLServer (each installed on first use into
# .venv/cache/peers; issue 28): every regime, yolor_p6 at 640 included.
"$BIN/yolor" bench peers --regimes cpu-demo,accelerator,large-photos,latency,overload,cpu-p6 \
    --p6-model "$MODELS/p6-640" --rounds 3 --seconds 5 --warmup 2 --out "$OUT/peers"
echo "results in $OUT"
