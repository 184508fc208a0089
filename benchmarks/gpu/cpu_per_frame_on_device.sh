#!/usr/bin/env bash
# Host CPU per frame before and after the worker's per-frame CPU work was cut (issue 15 part 3:
# ByteTrack cameras of a batch in one vectorised table update, classifier crops of NVDEC frames
# cut and normalised on the GPU), on the same GPU machine in the same call: the same
# density trial (benchmarks/gpu/density.py, kubevision-nvdec, STREAMS cameras over PROCESSES
# worker processes under MPS) with the worker files as they were, then as they are.
#
#   bash benchmarks/gpu/cpu_per_frame_on_device.sh BEFORE.tgz STREAMS PROCESSES [SEARCH_CONFIGS]
#
# BEFORE.tgz: `git archive` of the worker files before the change, overlaid on a copy of this
# tree (`git archive --format=tar.gz -o .before/worker_before.tgz bb7cf0a worker/classifier.py
# worker/gpu/preprocess.py worker/preprocess.py worker/metrics.py worker/runtime.py
# worker/trackers`). SEARCH_CONFIGS (e.g. kubevision-nvdec:8) then searches the largest N
# with the current files. Carry .whl, .gpu and .before (see density_on_device.sh). Everything
# lands in $OUT/cpu_per_frame.tgz (the device tool returns at most 8 files).
set -uo pipefail
final=${OUT:-benchmarks/results}
export OUT=/tmp/cpu_per_frame
before_tar=$1 streams=$2 processes=$3 search=${4:-}
root=$PWD
mkdir -p "$OUT" "$final"
pack() { tar -czf "$final/cpu_per_frame.tgz" -C "$OUT" .; }
rm -rf /tmp/before && mkdir -p /tmp/before
cp -r api worker operator benchmarks model_catalog tests pyproject.toml /tmp/before/
tar -xzf "$before_tar" -C /tmp/before || exit 1
ln -sfn "$root/.whl" /tmp/before/.whl
ln -sfn "$root/.gpu" /tmp/before/.gpu
mkdir -p /tmp/site /tmp/kv/kubevision && tar -xJf .whl/site312.tar.xz -C /tmp/site || exit 1
for d in api worker operator; do ln -sfn "$root/$d" "/tmp/kv/kubevision/$d"; done
PYTHONPATH=/tmp/site:/tmp/kv:$root python3 -m model_catalog.tools.prepare dynamic \
  .gpu/assets/models/yolox_nano_416.onnx /tmp/yolox_nano_dynamic.onnx || exit 1
fixed=(--model /tmp/yolox_nano_dynamic.onnx --configs "kubevision-nvdec:$processes"
  --streams "$streams")
for tree in before after; do
  dir=/tmp/before tests=()
  [[ $tree == after ]] && dir=$root tests=(--tests)
  (cd "$dir" && bash "$root/benchmarks/gpu/density_on_device.sh" "${tests[@]}" \
    --name "cpu_per_frame_$tree" -- "${fixed[@]}")
  pack
done
if [[ -n $search ]]; then
  bash benchmarks/gpu/density_on_device.sh --name gpu_density_decode_h200_c -- \
    --model /tmp/yolox_nano_dynamic.onnx --configs "$search"
  pack
fi
