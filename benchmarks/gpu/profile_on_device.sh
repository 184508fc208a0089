#!/usr/bin/env bash
# Where the worker's host CPU goes at decode-included density (issue 15: the bound is the
# host, per worker process): one density trial (benchmarks/gpu/density.py, kubevision-nvdec,
# STREAMS cameras over PROCESSES worker processes under MPS), each worker process sampled by
# py-spy for SECONDS once its measuring window begins, twice: every running thread (what
# costs cores) and only the thread holding the GIL (what serialises a process). Carry .whl
# and .gpu (see density_on_device.sh). Raw stacks land in $OUT/profile/{cpu,gil}.<pid>.txt;
# `python -m benchmarks.gpu.profile_summary $OUT/profile` folds them into a table.
#
#   bash benchmarks/gpu/profile_on_device.sh STREAMS PROCESSES [SECONDS]
set -uo pipefail
streams=$1 processes=$2 seconds=${3:-10}
OUT=${OUT:-benchmarks/results}
profile=$OUT/profile marks=/tmp/density_marks
mkdir -p /tmp/site /tmp/kv/kubevision "$profile"
tar -xJf .whl/site312.tar.xz -C /tmp/site || exit 1
for d in api worker operator; do ln -sfn "$PWD/$d" "/tmp/kv/kubevision/$d"; done
export PYTHONPATH=/tmp/site:/tmp/kv:$PWD
python3 -m model_catalog.tools.prepare dynamic .gpu/assets/models/yolox_nano_416.onnx \
  /tmp/yolox_nano_dynamic.onnx || exit 1
for mode in cpu gil; do
  rm -rf "$marks" && mkdir -p "$marks"
  DENSITY_PROFILE_DIR=$marks bash benchmarks/gpu/density_on_device.sh --name "profile_trial_$mode" \
    -- --model /tmp/yolox_nano_dynamic.onnx --configs "kubevision-nvdec:$processes" \
    --streams "$streams" --seconds $((seconds + 4)) --warmup 3 >"$profile/trial_$mode.log" 2>&1 &
  trial=$!
  deadline=$((SECONDS + 300))
  while (($(find "$marks" -name 'measuring.*' | wc -l) < processes)) && ((SECONDS < deadline)); do
    kill -0 $trial 2>/dev/null || break
    sleep 0.5
  done
  flags=(--threads -r 97 -f raw -d "$seconds")
  [[ $mode == gil ]] && flags+=(--gil)
  for mark in "$marks"/measuring.*; do
    pid=${mark##*.}
    /tmp/site/bin/py-spy record "${flags[@]}" -p "$pid" -o "$profile/$mode.$pid.txt" \
      >>"$profile/py-spy.log" 2>&1 &
  done
  wait
  tail -3 "$profile/trial_$mode.log"
done
