#!/usr/bin/env bash
# How the GPU re-id results were produced (issue 20: DeepSORT's re-id at real-time cost): on the
# GPU machine, with .whl/site312.tar.xz (benchmarks/gpu/device_site.sh) and .gpu/assets (the
# re-id models and mot/MOT17-mini from ../shared/assets) carried: the re-id GPU tests, then
# benchmarks/gpu/reid_cost.py. Results and logs go to $OUT (default benchmarks/results).
#
#   bash benchmarks/gpu/reid_on_device.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p /tmp/site /tmp/kv/kubevision "$OUT"
tar -xJf .whl/site312.tar.xz -C /tmp/site || exit 1
for d in api worker operator; do ln -sfn "$PWD/$d" "/tmp/kv/kubevision/$d"; done
export PYTHONPATH=/tmp/site:/tmp/kv:$PWD PYTHONUNBUFFERED=1 KUBEVISION_ASSETS=$PWD/.gpu/assets
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -m pytest -q -p no:cacheprovider --noconftest -rfEs tests/unit/test_gpu_reid.py 2>&1 |
  tail -15 | tee "$OUT/gpu_reid_tests.log"
python3 -m benchmarks.gpu.reid_cost --out "$OUT" 2>&1 | tail -15
