#!/usr/bin/env bash
# Label a K3s-managed Jetson so KubeVision places Jetson workers on it:
#   kubevision.io/accelerator=jetson, kubevision.io/jetson-model=<model>, kubevision.io/site=<site>
# Run on the Jetson itself (reads its model from the device tree) or pass the model explicitly:
#   edge_k3s/label-jetson.sh <node-name> <site> [jetson-model]
set -euo pipefail
node=${1:?usage: $0 <node-name> <site> [jetson-model]}
site=${2:?usage: $0 <node-name> <site> [jetson-model]}
model=${3:-}
if [ -z "$model" ] && [ -r /proc/device-tree/model ]; then
  # e.g. "NVIDIA Jetson AGX Orin Developer Kit" -> agx-orin
  model=$(tr -d '\0' </proc/device-tree/model | tr '[:upper:]' '[:lower:]' |
    sed -E 's/nvidia jetson //; s/ developer kit//; s/[^a-z0-9]+/-/g; s/-+$//')
fi
[ -n "$model" ] || { echo "cannot tell the Jetson model; pass it as the third argument" >&2; exit 1; }
kubectl label node "$node" --overwrite \
  kubevision.io/accelerator=jetson \
  "kubevision.io/jetson-model=$model" \
  "kubevision.io/site=$site"
