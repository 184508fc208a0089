#!/usr/bin/env bash
# How the CUDA sync-policy results were produced (issue 15, host CPU per frame): in one device
# call on the GPU machine, with .whl and .gpu carried (see density_on_device.sh), the GPU tests,
# then the same decode-included load twice, the workers' GPU waits spinning (CUDA's default) and
# then blocking (worker/gpu/sync_policy.py), then the largest N with blocking waits.
#
#   bash benchmarks/gpu/cuda_sync_on_device.sh STREAMS PROCESSES [START_PER_PROCESS]
#
# Writes to $OUT: gpu_cuda_sync_{spin,blocking}.json (the same-load pair), cuda_sync.log (their
# logs), gpu_tests.log, gpu_density_decode_h200_blocking.{json,md,log} (the search).
set -uo pipefail
streams=$1 processes=$2 start=${3:-12}
out=${OUT:-benchmarks/results}
runs=/tmp/cuda_sync_runs
mkdir -p "$runs" "$out"
python3 -m model_catalog.tools.prepare dynamic .gpu/assets/models/yolox_nano_416.onnx \
  /tmp/yolox_nano_dynamic.onnx >/dev/null || exit 1
common=(--model /tmp/yolox_nano_dynamic.onnx --configs "kubevision-nvdec:$processes")
# each step's files are copied out as soon as it ends: a call cut at its time limit keeps them
keep() {
  cp "$@" "$out"/ 2>/dev/null
  cat "$runs"/gpu_*.log >"$out/cuda_sync.log" 2>/dev/null
}
tests=--tests
for policy in spin blocking; do
  OUT=$runs bash benchmarks/gpu/density_on_device.sh $tests --name "gpu_cuda_sync_$policy" -- \
    "${common[@]}" --streams "$streams" --cuda-sync "$policy" 2>&1 | tail -4
  keep "$runs/gpu_cuda_sync_$policy.json" "$runs/gpu_tests.log"
  tests=
done
# the search writes (and tees its log) straight into $out
OUT=$out bash benchmarks/gpu/density_on_device.sh --name gpu_density_decode_h200_blocking -- \
  "${common[@]}" --cuda-sync blocking --start "$start" 2>&1 | tail -12
