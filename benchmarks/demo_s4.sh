#!/usr/bin/env bash
# Issue 13's demo experiment: today's demo model (yolor_csp depth 0.33 width 0.25) against a YOLOR-S4
# (yolor-ssss-dwt width 0.5: the same parameter count) trained on the same data with the same recipe.
# Usage: benchmarks/demo_s4.sh CANDIDATE_DIR TEST_DATASET_JSON OUT_DIR [eval|speed|both]
#   CANDIDATE_DIR: the S4 net exported as the demo is (tools/build_demo_model.sh steps 1-3 with
#   `--arch yolor-ssss-dwt --width 0.5` instead of `--arch yolor_csp --depth 0.33 --width 0.25`);
#   TEST_DATASET_JSON: the held-out set (yolor data synth --train 0 --val 500 --seed 1 --size 256).
# eval: held-out mAP of both exports (yolor eval, as served). speed: bare ONNX Runtime per batch size,
# then the served service at 1 and 16 clients; the two models alternate for two rounds so the
# machine's drift hits both alike.
set -euo pipefail
cd "$(dirname "$0")/.."
candidate=$1 test=$2 out=$3 what=${4:-both}
bin=.venv/bin
mkdir -p "$out"
dir_of() { if [ "$1" = s4 ]; then echo "$candidate"; else echo service/demo_model; fi; }
if [ "$what" != speed ]; then
    for name in demo s4; do
        $bin/yolor eval "$(dir_of $name)" --data "$test" --split val > "$out/eval-$name.txt" 2>&1
    done
fi
if [ "$what" != eval ]; then
    for round in 1 2; do
        for name in demo s4; do
            $bin/yolor bench bare "$(dir_of $name)" --device cpu --seconds 3 --out "$out/bare-$name-$round" \
                > "$out/bare-$name-$round.txt" 2>&1
            $bin/yolor bench serve --model "$(dir_of $name)" --device cpu --concurrency 1,16 --seconds 6 \
                --warmup 2 --bare-seconds 2 --rounds 1 --round-seconds 3 --out "$out/serve-$name-$round" \
                > "$out/serve-$name-$round.txt" 2>&1
        done
    done
fi
