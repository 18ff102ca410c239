#!/usr/bin/env bash
# Issue 13's demo experiment: today's demo model (yolor_csp depth 0.33 width 0.25) against a YOLOR-S4
# (yolor-ssss-dwt, width 0.5: the same parameter count) trained on the same data with the same recipe.
# Usage: benchmarks/demo_s4.sh CANDIDATE_DIR TEST_DATASET_JSON OUT_DIR
#   CANDIDATE_DIR: the S4 net exported as the demo is (tools/build_demo_model.sh steps 1-3 with
#   --arch yolor-ssss-dwt --width 0.5 and without --depth); TEST_DATASET_JSON: the held-out set
#   (yolor data synth --train 0 --val 500 --seed 1 --size 256).
# Accuracy: yolor eval on the held-out set. Speed: bare ONNX Runtime per batch size, then the served
# service (1 and 16 clients), the two models alternating twice so the machine's drift hits both.
set -euo pipefail
cd "$(dirname "$0")/.."
candidate=$1 test=$2 out=$3
bin=.venv/bin
mkdir -p "$out"
for name in demo s4; do
    dir=service/demo_model; [ $name = s4 ] && dir=$candidate
    $bin/yolor eval "$dir" --data "$test" --split val | tee "$out/eval-$name.txt"
done
for round in 1 2; do
    for name in demo s4; do
        dir=service/demo_model; [ $name = s4 ] && dir=$candidate
        $bin/yolor bench bare "$dir" --device cpu --seconds 4 --out "$out/bare-$name-$round"
        $bin/yolor bench serve --model "$dir" --device cpu --concurrency 1,16 --seconds 8 --warmup 2 \
            --bare-seconds 2 --rounds 1 --round-seconds 4 --out "$out/serve-$name-$round"
    done
done
