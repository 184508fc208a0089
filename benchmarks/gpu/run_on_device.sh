#!/usr/bin/env bash
# How the committed GPU results were produced: on the GPU machine (no network; Python 3.12 with
# torch, torchvision, onnx, onnxruntime, opencv), from the repository root, with the missing
# wheels in .whl/ (pydantic + deps, onnx2torch, filterpy, paho-mqtt, av) and the inputs in
# .gpu/ (yolox_nano_dynamic.onnx from `python -m model_catalog.tools.prepare dynamic`,
# mot17_1080p30_h264.mp4 from benchmarks/gpu/make_clip.sh (a busy street: ~17 people per frame),
# assets/ as KUBEVISION_ASSETS)
# and .gpu_cls/ (mobilenetv2_12_int8.onnx + imagenet_classes.txt). Results go to $OUT.
#
#   bash benchmarks/gpu/run_on_device.sh [tests] [classifier] [density] [throughput] [profile]
#                                      (tests, classifier and density when none is named)
#   profile: where one saturated worker process spends its CPU (py-spy wheel in .whl_prof/)
#   DENSITY_CONFIGS=MODE:PROCESSES,...  overrides the density configurations (default: all)
#   MPS=1  worker processes share the GPU through an NVIDIA MPS daemon started (and stopped)
#          here, as a node running nvidia-device-plugin with MPS sharing would
set -uo pipefail
OUT=${OUT:-benchmarks/results}
steps=${*:-tests classifier density}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/kv/kubevision
for d in api worker operator; do ln -sfn "$PWD/$d" "/tmp/kv/kubevision/$d"; done
export PYTHONPATH=/tmp/site:/tmp/kv:$PWD PYTHONUNBUFFERED=1 KUBEVISION_ASSETS=$PWD/.gpu/assets
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
echo "CPU cores: $(nproc); MPS control daemon: $(command -v nvidia-cuda-mps-control || echo absent)"
sharing="time-slicing (no MPS)"
if [[ ${MPS:-0} == 1 ]]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d &&
    python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    sharing="MPS"
    trap 'echo quit | nvidia-cuda-mps-control' EXIT
  else
    echo quit | nvidia-cuda-mps-control
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    sharing="time-slicing (the MPS daemon did not start)"
  fi
  echo "GPU sharing: $sharing"
fi
if [[ $steps == *tests* ]]; then
  python3 -m pytest -q -p no:cacheprovider --noconftest tests/unit/test_gpu_path.py 2>&1 |
    tail -25 | tee "$OUT/gpu_tests.log"
fi
ALL_CONFIGS=baseline-per-stream-batch1:1,kubevision-gpu-frames:1,kubevision-gpu-frames:2,\
kubevision-gpu-frames:4,kubevision-gpu-frames:8,kubevision-host-frames:1,kubevision-host-frames:4
if [[ $steps =~ classifier|density|profile ]]; then
  # the classifier as a GPU runs it: the INT8 weights as float operators (prepare float), FP16
  python3 -m model_catalog.tools.prepare float .gpu_cls/mobilenetv2_12_int8.onnx \
    /tmp/mobilenetv2_12_float.onnx || exit 1
fi
if [[ $steps == *classifier* ]]; then
  python3 -m benchmarks.gpu.classifier_calls --model /tmp/mobilenetv2_12_float.onnx --out "$OUT" \
    2>&1 | tee "$OUT/classifier_calls.log"
fi
if [[ $steps == *density* ]]; then
  python3 -m benchmarks.gpu.density --model .gpu/yolox_nano_dynamic.onnx \
    --classifier /tmp/mobilenetv2_12_float.onnx --classifier-precision fp16 \
    --labels .gpu_cls/imagenet_classes.txt \
    --clip .gpu/mot17_1080p30_h264.mp4 --seconds 4 --warmup 2 --out "$OUT" \
    --configs "${DENSITY_CONFIGS:-$ALL_CONFIGS}" --gpu-sharing "$sharing" \
    2>&1 | grep -v pos_axes | tee "$OUT/density.log"
  [[ $sharing == MPS ]] && tail -5 "$CUDA_MPS_LOG_DIRECTORY/control.log"
fi
if [[ $steps == *profile* ]]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/prof .whl_prof/*.whl || exit 1
  /tmp/prof/bin/py-spy record --subprocesses --gil -r 200 -f raw -o "$OUT/density_profile.txt" -- \
    python3 -m benchmarks.gpu.density --model .gpu/yolox_nano_dynamic.onnx \
    --classifier /tmp/mobilenetv2_12_float.onnx --classifier-precision fp16 \
    --labels .gpu_cls/imagenet_classes.txt --clip .gpu/mot17_1080p30_h264.mp4 \
    --configs kubevision-gpu-frames:1 --start 24 --limit 24 --seconds 15 --warmup 3 \
    --out /tmp/profile_run 2>&1 | grep -v pos_axes | tail -5
fi
if [[ $steps == *throughput* ]]; then
  python3 -m benchmarks.gpu.detector_throughput --yolox-onnx .gpu/yolox_nano_dynamic.onnx \
    --budget-s "${THROUGHPUT_BUDGET_S:-120}" --out "$OUT" 2>&1 | tail -60 | tee "$OUT/throughput.log"
fi
