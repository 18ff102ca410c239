#!/usr/bin/env bash
# INT8 against FP32 on this machine (docs/benchmarks.md, "INT8"): the demo model quantized on its
# own synthetic domain and gated on its held-out set; yolor_p6 at 640 (random weights) quantized on
# the sample photos. Then each pair side by side: `yolor bench bare --against int8` (latency per
# batch size) and the served demo model with YOLOR_PRECISION=int8. Its run time is in
# docs/benchmarks.md, "INT8".
#
#   benchmarks/int8.sh [OUT_DIR]        (default benchmarks/results/cpu; needs `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/cpu}
BIN=${BIN:-.venv/bin}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"

# The demo model: calibration on 256 training-domain images (seed 0), gate on the 500 held-out
# images the demo model's mAP is measured on (seed 1; docs/training.md).
"$BIN/yolor" data synth --out "$WORK/calib" --train 256 --val 0 --seed 0 --size 256 --overwrite
"$BIN/yolor" data synth --out "$WORK/held-out" --train 0 --val 500 --seed 1 --size 256 --overwrite
"$BIN/yolor" export service/demo_model/checkpoint.pt --out "$WORK/demo-int8" --max-batch 8 \
    --int8 --calib "$WORK/calib/dataset.json" --val-data "$WORK/held-out/dataset.json"
mkdir -p "$OUT/int8-demo"
cp "$WORK/demo-int8/model.json" "$OUT/int8-demo/model.json"
"$BIN/yolor" bench bare "$WORK/demo-int8" --device cpu --against int8 --seconds 5 --out "$OUT/int8-demo"
YOLOR_PRECISION=int8 "$BIN/yolor" bench serve --model "$WORK/demo-int8" --device cpu \
    --seconds 10 --rounds 3 --round-seconds 6 --out "$OUT/int8-demo"

# yolor_p6 at 640, random weights (speed only): its scores are ~1e-5 and nearly all equal, so the
# FP32 export has no detection for the gate to judge; --int8-min-detections 0 lets it through (a
# trained net's export keeps the default 10).
"$BIN/python" - "$WORK/yolor_p6.pt" <<'PY'
import sys, torch, yolor
torch.manual_seed(0)
yolor.save_checkpoint(yolor.build_model("yolor_p6", nc=80), sys.argv[1], input_size=640)
PY
"$BIN/python" - "$WORK/photos" <<'PY'
import sys, pathlib, cv2
from skimage import data
out = pathlib.Path(sys.argv[1]); out.mkdir(exist_ok=True)
for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "retina"):
    cv2.imwrite(str(out / f"{name}.jpg"), cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR))
PY
"$BIN/yolor" export "$WORK/yolor_p6.pt" --out "$WORK/p6-640-int8" --img-size 640 --max-batch 4 \
    --int8 --calib "$WORK/photos" --int8-min-detections 0
mkdir -p "$OUT/int8-p6-640"
cp "$WORK/p6-640-int8/model.json" "$OUT/int8-p6-640/model.json"
"$BIN/yolor" bench bare "$WORK/p6-640-int8" --device cpu --against int8 --seconds 10 --out "$OUT/int8-p6-640"
echo "results in $OUT"
