#!/usr/bin/env bash
# Is a worker process bounded by its one inference lane (a batch's GPU wait not overlapped
# with the next batch's host work)? The same decode-included density trial (8 worker
# processes under MPS, kubevision-nvdec) with 1 and 2 inference lanes per process, at each
# STREAMS, interleaved so a run cut short still compares like with like; `nvidia-smi dmon`
# samples SM and NVDEC utilisation beside every trial. Carry .whl and .gpu (see
# density_on_device.sh). Results: $OUT/lanes<L>_n<N>.{json,md} and dmon_l<L>_n<N>.log.
#
#   [LANES="1 2"] bash benchmarks/gpu/lanes_on_device.sh STREAMS...
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p /tmp/site /tmp/kv/kubevision "$OUT"
tar -xJf .whl/site312.tar.xz -C /tmp/site || exit 1
for d in api worker operator; do ln -sfn "$PWD/$d" "/tmp/kv/kubevision/$d"; done
PYTHONPATH=/tmp/site:/tmp/kv:$PWD python3 -m model_catalog.tools.prepare dynamic \
  .gpu/assets/models/yolox_nano_416.onnx /tmp/yolox_nano_dynamic.onnx || exit 1
for streams in "$@"; do
  for lanes in ${LANES:-1 2}; do
    name=lanes${lanes}_n${streams}
    nvidia-smi dmon -s u -d 1 >"$OUT/dmon_l${lanes}_n${streams}.log" 2>&1 &
    dmon=$!
    bash benchmarks/gpu/density_on_device.sh --name "$name" -- \
      --model /tmp/yolox_nano_dynamic.onnx --configs kubevision-nvdec:8 --streams "$streams" \
      --seconds 8 --warmup 3 --lanes "$lanes" >/dev/null 2>&1
    kill "$dmon"
    echo "lanes $lanes: $(tail -1 "$OUT/$name.md")"
  done
done
