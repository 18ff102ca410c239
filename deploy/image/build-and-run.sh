#!/usr/bin/env bash
# Build the CPU serving image (Dockerfile, default target `serve`) without a Docker engine and prove
# it: podman/buildah in chroot isolation on a Debian bookworm base made with debootstrap.
#
#   deploy/image/build-and-run.sh [WORK_DIR]        (default WORK_DIR: /tmp/yolor-image; run as root)
#
# Environment: DEBIAN_MIRROR (default: the first deb.debian.org-style URI the host's apt uses),
# PIP_CERT_FILE (default /etc/ssl/certs/ca-certificates.crt, passed as the build secret `pip_cert`),
# NO_CACHE=1 (podman build --no-cache), READY_TIMEOUT_S (default 120).
#
# Steps: 1. debootstrap minbase + python3 + python3-venv + ca-certificates (rootfs cached under
# WORK_DIR/rootfs) -> podman import as localhost/yolor-base:bookworm (skipped when present);
# 2. podman build --isolation chroot -> localhost/yolor-serving:cpu; 3. buildah from + buildah run
# (chroot isolation, the image's user, host network namespace) the image's entrypoint on 127.0.0.1:PORT,
# wait for /readyz, POST /detect a synthetic image, run `python3 -m service.healthcheck` inside;
# 4. checks inside the image (no torch, non-root, no training packages, demo model installed);
# 5. report sizes, hadolint, timings. The server and the buildah container are removed on exit.
set -euo pipefail

SCRIPT_START=$SECONDS
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/tmp/yolor-image}
BASE_TAG=localhost/yolor-base:bookworm
IMAGE_TAG=localhost/yolor-serving:cpu
PIP_CERT_FILE=${PIP_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-120}
CTR=yolor-serving-check-$$
SERVER_PID=""
PORT=""
FAILURES=0

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; FAILURES=$((FAILURES + 1)); }
ok() { printf 'ok: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root (debootstrap, podman/buildah chroot isolation)" >&2
    exit 2
fi
for tool in debootstrap podman buildah curl ss; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done
mkdir -p "$WORK"

descendants() {  # the pids below $1 (host view: chroot isolation shares the host's PID namespace)
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}
port_pids() { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u || true; }

cleanup() {
    local rc=$? pids pid alive t0
    if [ -n "$SERVER_PID" ]; then
        # `buildah run` exits on SIGTERM without passing it on: signal the server itself (the process
        # holding our port; before it listens, the processes under buildah run), as `docker stop`
        # would, let it drain, and buildah run ends with it.
        pids=$(port_pids "$PORT")
        [ -n "$pids" ] || pids=$(descendants "$SERVER_PID")
        t0=$SECONDS
        for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
        for _ in $(seq 1 45); do
            alive=""
            for pid in $pids "$SERVER_PID"; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
            [ -n "$alive" ] || break
            sleep 1
        done
        if [ -n "$alive" ]; then
            echo "cleanup: still running after 45 s:$alive; SIGKILL"
            for pid in $alive; do kill -KILL "$pid" 2>/dev/null || true; done
        else
            echo "cleanup: server (pids $(echo "$pids" | tr '\n' ' ')) stopped on SIGTERM in $((SECONDS - t0)) s; its last log lines:"
            tail -n 6 "$WORK/server.log" 2>/dev/null || true
        fi
    fi
    if buildah rm "$CTR" >/dev/null 2>&1; then echo "cleanup: removed buildah container $CTR"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------
log "1. base image $BASE_TAG"
T0=$SECONDS
if podman image exists "$BASE_TAG"; then
    echo "present, skipped"
else
    if [ -z "${DEBIAN_MIRROR:-}" ]; then
        DEBIAN_MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | grep -Eo 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' | head -n1 | tr -d ' ' || true)
        DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    fi
    ROOTFS=$WORK/rootfs
    if [ -f "$WORK/rootfs.done" ]; then
        echo "rootfs cached at $ROOTFS"
    else
        rm -rf "$ROOTFS"
        echo "debootstrap from $DEBIAN_MIRROR"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$ROOTFS" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
        touch "$WORK/rootfs.done"
    fi
    tar -C "$ROOTFS" --numeric-owner -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_TAG" >/dev/null
    echo "imported"
fi
BASE_S=$((SECONDS - T0))
echo "base: $(podman image inspect --format '{{.Size}}' "$BASE_TAG") bytes, ${BASE_S}s"

# ---------------------------------------------------------------------------------------------------
log "2. podman build (target serve, FLAVOUR=cpu) -> $IMAGE_TAG"
# --format docker: the OCI image format has no HEALTHCHECK (podman drops it); Docker's keeps it.
BUILD_ARGS=(--isolation chroot --format docker --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg FLAVOUR=cpu
    --target serve -f "$REPO/Dockerfile" -t "$IMAGE_TAG")
if [ -f "$PIP_CERT_FILE" ]; then BUILD_ARGS+=(--secret "id=pip_cert,src=$PIP_CERT_FILE"); fi
if [ "${NO_CACHE:-0}" = 1 ]; then BUILD_ARGS+=(--no-cache); fi
echo "podman build ${BUILD_ARGS[*]} $REPO"
# --iidfile: every later check runs on the image this build made, never on an older tag.
rm -f "$WORK/iid"
T0=$SECONDS
BUILD_RC=0
podman build "${BUILD_ARGS[@]}" --iidfile "$WORK/iid" "$REPO" >"$WORK/build.log" 2>&1 || BUILD_RC=$?
BUILD_S=$((SECONDS - T0))
grep -E 'STEP [0-9]+/[0-9]+: (FROM|RUN)|COMMIT|^Successfully' "$WORK/build.log" | cut -c1-160 || true
if [ "$BUILD_RC" -ne 0 ] || [ ! -s "$WORK/iid" ]; then
    tail -n 25 "$WORK/build.log" | cut -c1-300 >&2
    echo "FAIL: podman build exited $BUILD_RC after ${BUILD_S}s (full log: $WORK/build.log)" >&2
    exit 1
fi
IMAGE_ID=$(cat "$WORK/iid")
echo "build: ${BUILD_S}s, image $IMAGE_ID (full log: $WORK/build.log)"

# ---------------------------------------------------------------------------------------------------
log "3. serve from the image (buildah run, chroot isolation)"
IMAGE_USER=$(podman image inspect --format '{{.Config.User}}' "$IMAGE_ID")
IMAGE_WORKDIR=$(podman image inspect --format '{{.Config.WorkingDir}}' "$IMAGE_ID")
mapfile -t ENTRYPOINT < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$IMAGE_ID" | sed '/^$/d')
echo "image user: ${IMAGE_USER:-<none>}, workdir: $IMAGE_WORKDIR, entrypoint: ${ENTRYPOINT[*]}"
[ -n "$IMAGE_USER" ] || fail "the image sets no USER"
buildah rm "$CTR" >/dev/null 2>&1 || true
buildah from --name "$CTR" "$IMAGE_ID" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
in_ctr() { buildah run --isolation chroot --user "$IMAGE_USER" --env "YOLOR_PORT=$PORT" "$CTR" -- "$@"; }

UID_IN=$(in_ctr id -u)
echo "id -u inside (as the image's user): $UID_IN"
if [ "$UID_IN" != 0 ]; then ok "serving uid $UID_IN is not 0"; else fail "serving uid is 0"; fi

# The image's entrypoint, with --host/--port appended (argparse keeps the last): chroot isolation
# has the host's network namespace, so bind loopback on a free port.
in_ctr "${ENTRYPOINT[@]}" --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
T0=$SECONDS
READY=0
while [ $((SECONDS - T0)) -lt "$READY_TIMEOUT_S" ]; do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; then READY=1; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 1
done
READY_S=$((SECONDS - T0))
if [ "$READY" = 1 ]; then
    ok "GET /readyz 200 after ${READY_S}s on 127.0.0.1:$PORT"
    curl -fsS "http://127.0.0.1:$PORT/readyz"; echo
    SERVER_UIDS=$(port_pids "$PORT" \
        | while read -r pid; do awk '/^Uid:/ {print $2}' "/proc/$pid/status"; done | sort -u | tr '\n' ' ')
    echo "uid of the listening server process (host view): $SERVER_UIDS"
    case " $SERVER_UIDS " in *" 0 "*) fail "the server process runs as root";; *) ok "server process is not root";; esac

    SHAPES=$WORK/shapes.png
    "$REPO/.venv/bin/python" - "$SHAPES" <<'EOF'
import sys

import cv2
import numpy as np

img = np.full((256, 320, 3), 128, np.uint8)
cv2.circle(img, (90, 110), 45, (30, 30, 220), -1)
cv2.rectangle(img, (180, 60), (290, 170), (40, 200, 40), -1)
cv2.imwrite(sys.argv[1], img)
EOF
    DETECT_JSON=$WORK/detect.json
    if curl -fsS -F "images=@$SHAPES;type=image/png" "http://127.0.0.1:$PORT/detect?conf=0.25" -o "$DETECT_JSON"; then
        python3 -m json.tool "$DETECT_JSON"
        NDET=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); res=r.get("results") or [r]; print(sum(len(x.get("detections", [])) for x in res))' "$DETECT_JSON")
        if [ "$NDET" -ge 1 ]; then ok "POST /detect: $NDET detection(s)"; else fail "POST /detect returned no detection"; fi
    else
        fail "POST /detect failed"
    fi
    if in_ctr python3 -m service.healthcheck; then ok "python3 -m service.healthcheck exits 0 inside"; else fail "healthcheck exit $?"; fi
    if in_ctr python3 -m service.healthcheck /readyz; then ok "healthcheck /readyz exits 0 inside"; else fail "healthcheck /readyz exit $?"; fi
else
    fail "no 200 from /readyz within ${READY_TIMEOUT_S}s"
fi
echo "--- server log (tail)"; tail -n 15 "$WORK/server.log"

# ---------------------------------------------------------------------------------------------------
log "4. image contents"
if in_ctr python3 -c "import torch" 2>/dev/null; then fail "torch imports"; else ok "import torch fails (absent)"; fi
PIP_LIST=$(in_ctr pip list --format=freeze)
echo "$PIP_LIST" | tr '\n' ' '; echo
BAD=$(echo "$PIP_LIST" | grep -iE '^(torch|torchvision|tqdm|faster[-_]coco[-_]eval|scikit[-_]image)==' || true)
if [ -z "$BAD" ]; then ok "no torch/tqdm/faster-coco-eval/scikit-image"; else fail "training packages present: $BAD"; fi
MODEL_JSON=$(in_ctr python3 -c 'import pathlib, service; p = pathlib.Path(service.__file__).parent / "demo_model" / "model.json"; print(p if p.is_file() else "")')
case "$MODEL_JSON" in
    */site-packages/service/demo_model/model.json) ok "demo model: $MODEL_JSON";;
    *) fail "demo model not in site-packages: '${MODEL_JSON}'";;
esac
in_ctr sh -c 'ls -l "$(dirname "$1")"' _ "${MODEL_JSON:-/nonexistent}" || true
HEALTH=$(podman image inspect --format '{{json .HealthCheck}}' "$IMAGE_ID")
echo "image HEALTHCHECK: $HEALTH"
case "$HEALTH" in *service.healthcheck*) ok "HEALTHCHECK kept in the image";; *) fail "no HEALTHCHECK in the image";; esac
if in_ctr sh -c 'test ! -e /src && test ! -e /wheels'; then ok "no build sources (/src, /wheels) in the image"; else fail "/src or /wheels in the image"; fi

# ---------------------------------------------------------------------------------------------------
log "5. report"
HADOLINT=$(command -v "$REPO/.venv/bin/hadolint" || command -v hadolint || true)
if [ -n "$HADOLINT" ]; then
    if "$HADOLINT" "$REPO/Dockerfile"; then ok "hadolint Dockerfile: exit 0"; else fail "hadolint Dockerfile: exit $?"; fi
else
    echo "hadolint: not installed, skipped"
fi
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE_ID")
echo "image size: $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN {printf "%.0f MB", s / 1e6}'))"
podman images --filter reference=localhost/yolor-serving --filter reference=localhost/yolor-base
echo "timings: base ${BASE_S}s, build ${BUILD_S}s, ready ${READY_S}s, total $((SECONDS - SCRIPT_START))s"
if [ "$FAILURES" -eq 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL ($FAILURES check(s))"; exit 1; fi
