#!/bin/sh
# yolor-prepare NAME [DEST]: download the official checkpoint NAME and export it to DEST/NAME
# (model.json, model.onnx, model.fp16.onnx), once. The compose export step and the Kubernetes init
# container run it in the tools image; the server then builds its TensorRT engine beside the ONNX.
#   YOLOR_EXPORT_IMG_SIZE  input size (default: the size the official README tests NAME at)
#   YOLOR_EXPORT_MAX_BATCH largest batch the server will form (default 8)
set -eu
name=${1:?usage: yolor-prepare NAME [DEST]}
dest=${2:-/models}
out="$dest/$name"
if [ -f "$out/model.json" ]; then
    echo "yolor-prepare: $out is already exported; delete it to export again"
    exit 0
fi
size=${YOLOR_EXPORT_IMG_SIZE:-$(yolor weights show "$name" --field img_size)}
yolor weights download "$name" --out "$dest/weights"
yolor export "$dest/weights/$name.pt" --out "$out" --img-size "$size" --fp16 \
    --max-batch "${YOLOR_EXPORT_MAX_BATCH:-8}"
