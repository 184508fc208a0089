# shellcheck shell=bash
# Sourced by benchmarks/gpu/*_on_device.sh from the tree to run (the repository root, or a copy
# of it): unpacks the carried wheels (.whl/site312.tar.xz, benchmarks/gpu/device_site.sh) into
# /tmp/site, makes this tree's api/, worker/ and operator/ importable as `kubevision`, points the
# tests at .gpu/assets, and names the GPU. OUT defaults to benchmarks/results.
OUT=${OUT:-benchmarks/results}
mkdir -p /tmp/site /tmp/kv/kubevision "$OUT"
tar -xJf .whl/site312.tar.xz -C /tmp/site || exit 1
for d in api worker operator; do ln -sfn "$PWD/$d" "/tmp/kv/kubevision/$d"; done
export PYTHONPATH=/tmp/site:/tmp/kv:$PWD PYTHONUNBUFFERED=1 KUBEVISION_ASSETS=$PWD/.gpu/assets
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
