#!/usr/bin/env bash
# How the NVDEC ceiling results were produced (benchmarks/gpu/nvdec_ceiling.py,
# benchmarks/results/gpu_nvdec_ceiling_h200*.{json,md}) on the GPU machine (no network; Python
# 3.12 with torch, numpy, opencv, pytest), from the repository root, with two ignored folders:
#   .whl/site312.tar.xz  av, PyNvVideoCodec (its samples, FFmpeg sources and CUDA 12.1 build left
#                        out), pydantic + its deps, cryptography + cffi (the capture tests import
#                        tests/envtest) and py-spy (as bin/py-spy), unpacked from their cp312
#                        manylinux wheels and packed with xz to fit the 64 MiB the device tool
#                        carries:  tar -C SITE -cf - . | xz -9 > .whl/site312.tar.xz
#   .kubevision/gpu/     clip.mp4 and clip_ippp.mp4 (make_clip.sh OUT 150 2 / OUT 150 0: 1080p
#                        H.264 at ~8 Mbit/s with and without B-frames), baseline/ (capture.py and
#                        nvdec.py as committed before the change: git show HEAD:worker/...),
#                        assets/videos/ (the shared test videos the GPU tests read)
#
#   bash benchmarks/gpu/nvdec_on_device.sh [--tests] [--ippp CONFIGS] -- NVDEC_CEILING_ARGS...
#
# --tests runs the NVDEC tests first (output in gpu_tests.log); --ippp CONFIGS measures those
# configurations again on the IPPP clip (gpu_nvdec_ceiling_h200_ippp). Results, logs and py-spy
# profiles go to $OUT (default benchmarks/results); logs and profiles also as nvdec_logs.tar.gz.
# The committed results came from (carry: .whl and .kubevision/gpu):
#   bash benchmarks/gpu/nvdec_on_device.sh --tests \
#     --ippp 'decode@16,64;worker-baseline@16,64;worker@16,64,96;worker/p4@96' -- \
#     --configs 'decode@1,4,8,16,32,64;worker-baseline@1,4,16,32,64;worker@1,4,16,32,64,96;
#     worker-exact@16,64;worker-baseline/p4@64;worker/p4@64,128;decode/t8@64;bgr-sync@16;rgb@16' \
#     --profile worker@64 --profile-seconds 4 --seconds 4 --budget-s 290
set -uo pipefail
OUT=${OUT:-benchmarks/results}
GPU_DIR=.kubevision/gpu
mkdir -p /tmp/site /tmp/kv/kubevision "$OUT"
tar -xJf .whl/site312.tar.xz -C /tmp/site || exit 1
for d in api worker operator; do ln -sfn "$PWD/$d" "/tmp/kv/kubevision/$d"; done
export PYTHONPATH=/tmp/site:/tmp/kv:$PWD PYTHONUNBUFFERED=1 KUBEVISION_ASSETS=$PWD/$GPU_DIR/assets
nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.decoder --format=csv
python3 --version
tests=0 ippp=""
while [[ $# -gt 0 && $1 != -- ]]; do
  case $1 in
    --tests) tests=1 ;;
    --ippp) ippp=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ ${1:-} == -- ]] && shift
if [[ $tests == 1 ]]; then
  capture=tests/integration/test_capture.py
  python3 -m pytest -q -p no:cacheprovider --noconftest -rfEs tests/unit/test_nvdec.py \
    "$capture::test_nvdec_camera_loops_a_file_with_frames_in_gpu_memory" \
    "$capture::test_auto_decoder_without_nvdec_decodes_on_cpu_and_says_so" \
    "$capture::test_a_gpu_frame_waits_for_its_decoding_before_the_host_copy" \
    "$capture::test_a_frame_copies_gpu_pixels_to_the_host_once_on_demand" 2>&1 |
    tail -40 | tee "$OUT/gpu_tests.log"
fi
common=(--baseline "$GPU_DIR/baseline" --py-spy /tmp/site/bin/py-spy --out "$OUT")
python3 -m benchmarks.gpu.nvdec_ceiling --clip "$GPU_DIR/clip.mp4" --name gpu_nvdec_ceiling_h200 \
  --check-videos "$GPU_DIR"/assets/videos/*.mp4 "${common[@]}" "$@" 2>&1 |
  grep -v "^$" | tee "$OUT/nvdec_ceiling.log" | grep -v " result {"
if [[ -n $ippp ]]; then
  python3 -m benchmarks.gpu.nvdec_ceiling --clip "$GPU_DIR/clip_ippp.mp4" \
    --name gpu_nvdec_ceiling_h200_ippp --configs "$ippp" "${common[@]}" --budget-s 90 2>&1 |
    grep -v "^$" | tee "$OUT/nvdec_ceiling_ippp.log" | grep -v " result {" | tail -25
fi
(cd "$OUT" && tar -czf nvdec_logs.tar.gz ./*.log ./pyspy_*.txt 2>/dev/null && rm -f ./*.log ./pyspy_*.txt)
