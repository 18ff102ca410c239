# syntax=docker/dockerfile:1.7
# Images of the YOLOR detection service (docs/deployment.md):
#   serve (default target)  the server and the bundled demo model; no torch, no training packages.
#                           CPU: the default base. GPU: --build-arg FLAVOUR=gpu --build-arg BASE_IMAGE=<CUDA 13 base>
#   tools                   `yolor weights` + `yolor export` (torch), for the one-shot export step.
# pip reaches the package index directly; behind a TLS-intercepting proxy pass its CA bundle as the
# build secret `pip_cert` (`--secret id=pip_cert,src=/path/ca.crt`); without it nothing changes.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
# The CUDA base images have no Python, and Debian's python3 lacks ensurepip until python3-venv is
# installed: `python3 -m venv --help` works without it, creating a venv does not. Probe ensurepip.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 yolor \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin yolor \
    && install -d -o 10001 -g 10001 /models
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY yolor ./yolor
COPY export ./export
COPY service ./service
COPY cli ./cli
COPY train ./train
COPY bench ./bench
RUN --mount=type=secret,id=pip_cert,required=false \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels .

FROM base AS tools
# torch from the index the build uses; pass TORCH_INDEX_URL (PyTorch's CPU wheel index) for a
# CPU-only build a fraction of the size. Export traces and validates on the CPU either way.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
# The project's own wheel: its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=secret,id=pip_cert,required=false \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/venv \
    && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
    && pip install "$(ls /wheels/*.whl)[export,train]"
COPY --chmod=755 deploy/prepare-model.sh /usr/local/bin/yolor-prepare
USER 10001:10001
WORKDIR /models
ENTRYPOINT ["yolor"]
CMD ["--help"]

FROM base AS serve
# FLAVOUR=gpu: ONNX Runtime's CUDA build and TensorRT, both for CUDA 13 (docs/deployment.md).
ARG FLAVOUR=cpu
# Split into words with globbing off (`set -f` below): `1.31.*` is a version, not a file pattern.
ARG GPU_PACKAGES="onnxruntime-gpu==1.31.* tensorrt-cu13==11.4.* cuda-python==13.*"
# check_gpu_packages: onnxruntime-gpu TensorRT EP needs TensorRT 10, the image has 11: the EP is not requested
# TensorRT serves through the native backend; the server skips that EP by the same rule, and
# `python tools/check_gpu_packages.py` checks the line above against the wheels the pins resolve to.
# tensorrt-cu13-libs on PyPI is a stub that fetches the libraries from NVIDIA's index, so pip needs
# that index too; pass a mirror of it (behind a proxy, say) with --build-arg NVIDIA_INDEX_URL=<url>.
ARG NVIDIA_INDEX_URL=https://pypi.nvidia.com
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=secret,id=pip_cert,required=false \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/venv \
    && pip install "$(ls /wheels/*.whl)[serve]" \
    && if [ "$FLAVOUR" = gpu ]; then \
        set -f \
        && pip uninstall -y onnxruntime \
        && pip install --extra-index-url "$NVIDIA_INDEX_URL" $GPU_PACKAGES; \
    elif [ "$FLAVOUR" != cpu ]; then \
        echo "FLAVOUR must be cpu or gpu, not $FLAVOUR" >&2; exit 1; \
    fi
USER 10001:10001
WORKDIR /home/yolor
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "service.healthcheck"]
# uvicorn drains on SIGTERM for up to YOLOR_REQUEST_TIMEOUT_S + 5 s (35 s by default): give the
# container a longer stop timeout (compose stop_grace_period 45s, `docker run --stop-timeout 45`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["yolor", "serve", "--host", "0.0.0.0"]
