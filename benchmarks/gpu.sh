#!/usr/bin/env bash
# The one prepared command for the lent H200: the torch backend's speed (`yolor bench gpu`), a short
# served run, its GPU tests. NOT RUN YET: written and checked on a CPU-only machine (the bench's report,
# budget, served model.json and no-GPU refusal are tested there; its stages need a GPU); no GPU number
# from it exists in this repository.
#
# The call, from the repository root, after `bash benchmarks/gpu_wheels.sh` (which fills .whl/):
#
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540)
#
# It ends by itself within TOTAL_S (default 460 s, under 8 minutes); 540 leaves the call a margin.
# The device has no installed package: everything runs as `python -m cli` with the repository on
# PYTHONPATH. Without .whl it still runs `python -m cli bench gpu` (torch and numpy only: no pydantic,
# no FastAPI), without --model-dir (model.json is written through pydantic), and skips the served run
# and the tests.
# What comes back under $OUT (7 files; the tool returns at most 8):
#   gpu.log                  everything printed here, the bench's table last but one
#   gpu-bench.json, .md      `python -m cli bench gpu` (JSON rewritten after every stage)
#   server.log               `python -m cli serve` with the torch backend
#   serve/serve.json, .md, .png   `python -m cli bench serve URL --concurrency 1,32,64`
set -uo pipefail

OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
tee_pid=$!
# tee may still be writing when the script ends: every exit (the last line's, or `set -u`'s) closes
# tee's pipe and waits for it, or gpu.log can lose its last lines. The exit status is kept.
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT

TOTAL_S=${TOTAL_S:-460}
left() { echo $((TOTAL_S - SECONDS)); }
PYTHON=${PYTHON:-python3}
REPO=$PWD
WORK=${WORK:-/tmp/yolor-gpu}
MODEL_DIR=$WORK/model
PORT=${PORT:-8765}
export PYTHONUNBUFFERED=1

echo "== gpu.sh: $(date -u +%FT%TZ), $(uname -m), budget ${TOTAL_S} s"
nvidia-smi -L || true
"$PYTHON" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.is_available())'

# The device README's incantation, except that a failed install skips only what needs the wheels.
served=0
if compgen -G ".whl/*.whl" >/dev/null; then
    if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
        export PYTHONPATH=/tmp/site
        served=1
    else
        echo "== wheel install failed: no served run, no tests"
    fi
else
    echo "== no .whl/: no served run, no tests (bash benchmarks/gpu_wheels.sh makes it)"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO"

echo "== yolor bench gpu ($(left) s left)"
mkdir -p "$MODEL_DIR"
model_dir=()
((served)) && model_dir=(--model-dir) # the served folder's model.json: for the served run only
timeout -k 10 250 "$PYTHON" -m cli bench gpu --budget-s 200 --out "$OUT" --workdir "$MODEL_DIR" "${model_dir[@]}"
bench=$?
echo "== yolor bench gpu exit $bench ($(left) s left)"

if ((served)) && [[ -f $MODEL_DIR/model.json ]] && (($(left) >= 120)); then
    echo "== served run: python -m cli serve, torch backend ($(left) s left)"
    YOLOR_BACKEND=torch YOLOR_DEVICE=cuda YOLOR_CHECKPOINT=$MODEL_DIR/checkpoint.pt YOLOR_MAX_BATCH_SIZE=32 \
        timeout -k 5 $(($(left) - 10)) "$PYTHON" -m cli serve --model "$MODEL_DIR" --port "$PORT" \
        >"$OUT/server.log" 2>&1 &
    server=$!
    # Ready once warm-up is done: every batch size 1..32 (graph captures of 1..8), then the detector's.
    "$PYTHON" - "http://127.0.0.1:$PORT/readyz" $(($(left) - 60)) "$server" <<'EOF'
import os, sys, time, urllib.request

url, wait_s, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
start = time.monotonic()
while time.monotonic() - start < wait_s:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited before it was ready (see server.log)")
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                print(f"ready after {time.monotonic() - start:.0f} s")
                sys.exit(0)
    except Exception:
        pass
    time.sleep(1)
sys.exit(f"not ready after {wait_s:.0f} s")
EOF
    if (($? == 0)); then
        timeout -k 5 $(($(left) - 10)) "$PYTHON" -m cli bench serve "http://127.0.0.1:$PORT" \
            --concurrency 1,32,64 --seconds 10 --warmup 2 --rounds 0 --out "$OUT/serve"
        echo "== bench serve exit $?"
    fi
    kill "$server" 2>/dev/null
    wait "$server" 2>/dev/null
    tail -n 5 "$OUT/server.log"
else
    echo "== served run skipped (wheels: $served, model.json: $([[ -f $MODEL_DIR/model.json ]] && echo yes || echo no), $(left) s left)"
fi

if ((served)) && (($(left) >= 70)); then
    echo "== GPU tests ($(left) s left)"
    # The torch backend on the GPU; TensorRTBackend's CUDA code for real around a fake echo engine
    # (the image has no TensorRT: its engine-building tests skip).
    timeout -k 5 $(($(left) - 10)) "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu \
        tests/service/backends/test_torch_cuda.py tests/service/backends/test_tensorrt_backend.py
    echo "== GPU tests exit $?"
else
    echo "== GPU tests skipped ($(left) s left)"
fi

echo "== done in ${SECONDS} s"
[[ -f $OUT/gpu-bench.md ]] && cat "$OUT/gpu-bench.md"
exit "$bench"
