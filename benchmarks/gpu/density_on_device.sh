#!/usr/bin/env bash
# How the decode-included density results were produced (benchmarks/gpu/density.py,
# benchmarks/results/gpu_density_decode_h200.{json,md}) on the GPU machine (no network; its
# python3 has torch, numpy, opencv, onnx, onnxruntime, pytest), from the repository root,
# with two ignored folders carried:
#   .whl/site312.tar.xz  benchmarks/gpu/device_site.sh (av, PyNvVideoCodec, pydantic, ...)
#   .gpu/                yolox_nano_dynamic.onnx (model_catalog.tools.prepare dynamic),
#                        assets/models/ (yolox_nano_416, mobilenetv2_12_int8 + labels),
#                        clip_ippp.mp4 (make_clip.sh OUT 150 0: 1080p30 H.264 IPPP ~8 Mbit/s,
#                        what cameras send), assets/videos/ (the shared videos the tests read)
#
#   bash benchmarks/gpu/density_on_device.sh [--tests] [--name NAME] -- DENSITY_ARGS...
#
# Worker processes share the GPU through an NVIDIA MPS daemon started here, as a node running
# nvidia-device-plugin with MPS sharing would. --tests runs the GPU and NVDEC tests first
# (output in gpu_tests.log). --yolov8 exports the YOLOv8s-class 640 model (random weights) to
# /tmp/yolov8s_640.onnx first. Results and logs go to $OUT (default benchmarks/results).
set -uo pipefail
# shellcheck source=benchmarks/gpu/device_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
echo "CPU cores: $(nproc)"
tests=0 name=gpu_density_decode yolov8=0
while [[ $# -gt 0 && $1 != -- ]]; do
  case $1 in
    --tests) tests=1 ;;
    --yolov8) yolov8=1 ;;
    --name) name=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ ${1:-} == -- ]] && shift
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
sharing="time-slicing (the MPS daemon did not start)"
if nvidia-cuda-mps-control -d && python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
  sharing="MPS"
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
else
  echo quit | nvidia-cuda-mps-control
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
echo "GPU sharing: $sharing"
if [[ $tests == 1 ]]; then
  python3 -m pytest -q -p no:cacheprovider --noconftest -rfEs tests/unit/test_gpu_path.py \
    tests/unit/test_nvdec.py tests/integration/test_capture.py tests/unit/test_device_crops.py \
    tests/unit/test_sync_policy.py tests/unit/test_gpu_reid.py \
    -k "gpu or nvdec or paced or cuda" 2>&1 |
    tail -30 | tee "$OUT/gpu_tests.log"
fi
if [[ $yolov8 == 1 ]]; then
  python3 -m benchmarks.gpu.export_yolov8 --scale s --size 640 /tmp/yolov8s_640.onnx 2>&1 | tail -1
fi
python3 -m model_catalog.tools.prepare float .gpu/assets/models/mobilenetv2_12_int8.onnx \
  /tmp/mobilenetv2_12_float.onnx || exit 1
python3 -m benchmarks.gpu.density --classifier /tmp/mobilenetv2_12_float.onnx \
  --classifier-precision fp16 --labels .gpu/assets/models/imagenet_classes.txt --clip .gpu/clip_ippp.mp4 \
  --video .gpu/clip_ippp.mp4 --gpu-sharing "$sharing" --name "$name" --out "$OUT" "$@" 2>&1 |
  grep -v pos_axes | tee "$OUT/$name.log"
