#!/usr/bin/env bash
# How the GPU re-id results were produced (issue 20: DeepSORT's re-id at real-time cost): on the
# GPU machine, with .whl/site312.tar.xz (benchmarks/gpu/device_site.sh) and .gpu/assets (the
# re-id models and mot/MOT17-mini from ../shared/assets) carried: the re-id GPU tests, then
# benchmarks/gpu/reid_cost.py. Results and logs go to $OUT (default benchmarks/results).
#
#   bash benchmarks/gpu/reid_on_device.sh
set -uo pipefail
# shellcheck source=benchmarks/gpu/device_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
python3 -m pytest -q -p no:cacheprovider --noconftest -rfEs tests/unit/test_gpu_reid.py 2>&1 |
  tail -15 | tee "$OUT/gpu_reid_tests.log"
python3 -m benchmarks.gpu.reid_cost --out "$OUT" 2>&1 | tail -15
