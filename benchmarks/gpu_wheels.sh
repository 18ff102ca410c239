#!/usr/bin/env bash
# Download, into .whl/, the Python 3.12 wheels that benchmarks/gpu.sh needs on the lent H200 for its
# optional served run and GPU tests: the H200 image has torch, numpy, onnxruntime (CPU), OpenCV,
# prometheus-client, aiohttp, anyio, click, h11, httpx, annotated-doc, tqdm, but no fastapi, uvicorn,
# pydantic, pydantic-settings or python-multipart (.library/device/KINDS.md lists its packages).
# The versions are those of this repository's dev venv (what its tests pass with). --no-deps: every
# needed one is named; typing-extensions is carried because pydantic 2.14 needs >= 4.16 and the
# image's version is not known here. `yolor bench gpu` itself needs none of these (its
# --model-dir, pydantic: gpu.sh passes it only once the wheels are installed).
#
#   bash benchmarks/gpu_wheels.sh      # from the repository root; a few MB; .whl/ is git-ignored
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    fastapi==0.165.0
    starlette==1.10.0
    pydantic==2.14.4
    pydantic-core==2.50.5
    pydantic-settings==2.16.3
    python-dotenv==1.2.4
    annotated-types==0.8.0
    typing-inspection==0.4.5
    typing-extensions==4.16.0
    opentelemetry-api==1.45.2
    python-multipart==0.0.34
    uvicorn==0.55.0
)

grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
mkdir -p .whl
PYTHON=${PYTHON:-python3}
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${WHEELS[@]}"

# One version of each package: two stop the whole install there.
dupes=$(ls .whl/*.whl | sed -E 's|.*/([^-]+)-.*|\1|' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [[ -n "$dupes" ]]; then
    echo "more than one wheel of: $dupes (delete the older ones from .whl/)" >&2
    exit 1
fi
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels, $((total / 1024)) KiB in .whl/ (the device tool carries 64 MiB at most)"
if ((total > 40 * 1024 * 1024)); then
    echo "over the 40 MiB this project allows itself for wheels" >&2
    exit 1
fi
