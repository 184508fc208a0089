#!/usr/bin/env bash
# One worker change measured before and after on the same GPU machine in the same call: the
# same density trials (benchmarks/gpu/density.py, kubevision-nvdec, STREAMS cameras over
# PROCESSES worker processes under MPS) with the worker files as they were, then as they are.
# First used for issue 15 part 3 (host CPU per frame: ByteTrack cameras of a batch in one
# vectorised table update, classifier crops of NVDEC frames cut on the GPU).
#
#   [NAME=cpu_per_frame] bash benchmarks/gpu/cpu_per_frame_on_device.sh BEFORE.tgz STREAMS \
#       PROCESSES [SEARCH_CONFIGS]
#
# BEFORE.tgz: `git archive` of the worker files before the change, overlaid on a copy of this
# tree (e.g. `git archive --format=tar.gz -o .before/worker_before.tgz bb7cf0a
# worker/classifier.py worker/gpu/preprocess.py worker/preprocess.py worker/metrics.py
# worker/runtime.py worker/trackers`). STREAMS: one load or several (96,128,160), each a
# trial. SEARCH_CONFIGS (e.g. kubevision-nvdec:8) then searches the largest N with the
# current files (results ${NAME}_search). Carry .whl, .gpu and .before (see
# density_on_device.sh). Everything lands in $OUT/$NAME.tgz (the device tool returns at most
# 8 files). TESTS=0 skips the GPU tests that run before the "after" trials.
set -uo pipefail
final=${OUT:-benchmarks/results}
export OUT=/tmp/cpu_per_frame
before_tar=$1 streams=$2 processes=$3 search=${4:-} name=${NAME:-cpu_per_frame} gpu_tests=${TESTS:-1}
root=$PWD
mkdir -p "$OUT" "$final"
pack() { tar -czf "$final/$name.tgz" -C "$OUT" .; }
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
  [[ $tree == after ]] && dir=$root
  [[ $tree == after && $gpu_tests == 1 ]] && tests=(--tests)
  (cd "$dir" && bash "$root/benchmarks/gpu/density_on_device.sh" "${tests[@]}" \
    --name "${name}_$tree" -- "${fixed[@]}")
  pack
done
if [[ -n $search ]]; then
  bash benchmarks/gpu/density_on_device.sh --name "${name}_search" -- \
    --model /tmp/yolox_nano_dynamic.onnx --configs "$search"
  pack
fi
