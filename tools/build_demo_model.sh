#!/usr/bin/env bash
# Rebuild the bundled demo model (service/demo_model) from nothing, on CPU, and measure it.
# Usage: tools/build_demo_model.sh [WORK_DIR]   (default: runs/demo-build; needs `make install` first)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/demo-build}
bin=.venv/bin
mkdir -p "$work"

# 1. Data: 2000 + 300 training/validation images (seed 0) and a held-out test set (seed 1).
$bin/yolor data synth --out "$work/shapes" --train 2000 --val 300 --seed 0 --size 256 --overwrite
$bin/yolor data synth --out "$work/shapes-test" --train 0 --val 500 --seed 1 --size 256 --overwrite

# 2. Train a small YOLOR (main-branch yolor_csp, depth 0.33, width 0.25: 2.3 M parameters, implicit
#    layers included) at 256 px. Adam (the official --adam option) and one step per batch learn far
#    faster per CPU minute than SGD; the rest is the official recipe.
/usr/bin/time -v $bin/yolor train --data "$work/shapes/dataset.json" --out "$work/run" \
    --arch yolor_csp --depth 0.33 --width 0.25 --img-size 256 --epochs 70 --batch 16 \
    --nominal-batch 16 --optimizer adam --lr0 0.002 --warmup-epochs 1 --workers 1 --seed 0 \
    2> >(grep -v '^epoch .*it/s' >&2)

# 3. Ship: the EMA weights only (no optimizer state, FP16 storage), exported with validation.
$bin/yolor convert "$work/run/best.pt" "$work/demo.pt" --half
rm -rf service/demo_model
$bin/yolor export "$work/demo.pt" --out service/demo_model --top-k 300 --max-batch 8
cp "$work/demo.pt" service/demo_model/checkpoint.pt
$bin/python -m train.demo_sample --out service/demo_model   # the page's "Try a sample" image

# 4. Measure: held-out mAP of what the service runs (the ONNX), and latency.
$bin/yolor eval service/demo_model --data "$work/shapes-test/dataset.json" --split val
$bin/yolor bench serve --model service/demo_model --device cpu --concurrency 1,16 --seconds 8
