#!/usr/bin/env bash
# Which kernels fill the SMs at decode-included density (issue 15): the same density trial
# (benchmarks/gpu/density.py, kubevision-nvdec, STREAMS cameras over PROCESSES worker
# processes under MPS) twice, first plain (the throughput figure), then with every worker
# process tracing its measuring window's CUDA kernels (benchmarks/gpu/kernel_profile.py;
# the trace costs throughput). Carry .whl and .gpu (see density_on_device.sh). Results:
# $OUT/kernels_plain.{json,md}, $OUT/kernels.{json,md} (the pooled trace).
#
#   bash benchmarks/gpu/kernels_on_device.sh STREAMS PROCESSES [SECONDS]
set -uo pipefail
streams=$1 processes=$2 seconds=${3:-3}
OUT=${OUT:-benchmarks/results}
traces=/tmp/kernel_traces
mkdir -p /tmp/site /tmp/kv/kubevision "$OUT" && rm -rf "$traces" && mkdir -p "$traces"
tar -xJf .whl/site312.tar.xz -C /tmp/site || exit 1
for d in api worker operator; do ln -sfn "$PWD/$d" "/tmp/kv/kubevision/$d"; done
export PYTHONPATH=/tmp/site:/tmp/kv:$PWD
python3 -m model_catalog.tools.prepare dynamic .gpu/assets/models/yolox_nano_416.onnx \
  /tmp/yolox_nano_dynamic.onnx || exit 1
trial=(--model /tmp/yolox_nano_dynamic.onnx --configs "kubevision-nvdec:$processes"
  --streams "$streams" --warmup 3)
bash benchmarks/gpu/density_on_device.sh --name kernels_plain -- "${trial[@]}" --seconds 8 \
  >/dev/null 2>&1
echo "plain: $(tail -1 "$OUT/kernels_plain.md")"
DENSITY_KERNEL_PROFILE=$traces bash benchmarks/gpu/density_on_device.sh --name kernels_traced \
  -- "${trial[@]}" --seconds "$seconds" >/dev/null 2>&1
echo "traced: $(tail -1 "$OUT/kernels_traced.md")"
python3 -m benchmarks.gpu.kernel_profile "$traces" --json "$OUT/kernels.json" | tee "$OUT/kernels.md"
