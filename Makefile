# The verbs a newcomer and CI need. `make demo` and `make test` work on a fresh clone:
# they create .venv, install the package and build the pinned Kubernetes binaries on first use;
# `make test` also installs the Debian packages of the real components its tests run.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TYPECHECK_ROOT := .kubevision/typecheck

.PHONY: system-packages bench bench-cascade bench-reliability bench-operator bench-worker bench-tracking bench-autoscaling bench-fleet bench-gpu bench-gpu-decode bench-gpu-nvdec bench-gpu-density help install toolchain lint format crds dashboards test test-unit demo cluster-up cluster-down cluster-status fleet-up images images-smoke clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
# TrackEval (HOTA, benchmarks/hota.py) without its dependencies: it requires opencv-python,
# a second owner of cv2 beside opencv-python-headless; its metrics need only numpy/scipy
	$(PY) -m pip install -q --no-deps trackeval==1.3.0
	touch $@

install: $(STAMP) ## create .venv and install kubevision with its dev tools

system-packages: ## install the Debian packages the tests run (ffmpeg, GStreamer RTSP, mosquitto, prometheus)
	bash tests/toolchain/system_packages.sh

toolchain: $(STAMP) ## build (or find cached) the pinned Kubernetes binaries and helm; fetch tritonserver (pytriton's CPU build) with its Python-backend env, the Kafka broker's jars and an S3 server (moto)
	bash tests/toolchain/build.sh
	bash tests/toolchain/triton.sh
	bash tests/toolchain/kafka.sh
	bash tests/toolchain/s3_server.sh

# mypy cannot follow the package-dir mapping (operator/ -> kubevision.operator), so it checks a
# view of symlinks shaped like the import names.
$(TYPECHECK_ROOT)/kubevision:
	mkdir -p $@
	for d in api operator worker; do ln -sfn ../../../$$d $@/$$d; done

lint: $(STAMP) $(TYPECHECK_ROOT)/kubevision ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

dashboards: $(STAMP) ## regenerate the chart's Grafana dashboards (charts/kubevision/files/dashboards/)
	$(PY) -m charts.grafana.dashboards

crds: $(STAMP) ## regenerate crds/ and the chart's CRDs from kubevision.api
	$(PY) -m kubevision.api.crd

test: system-packages lint toolchain ## install what is missing, lint, type-check and run the whole suite (unit + real control plane)
	$(PY) -m pytest

test-unit: $(STAMP) ## only the tests that need no cluster
	$(PY) -m pytest -m "not cluster"

bench: bench-operator bench-worker bench-tracking bench-autoscaling ## run every benchmark; results go to benchmarks/results/

bench-operator: $(STAMP) toolchain ## apply -> workload latency of the operator vs the Deployment controller
	$(PY) -m benchmarks.operator_latency

bench-worker: $(STAMP) ## one 30 FPS stream: worker latency per stage and throughput vs the naive loop
	$(PY) -m benchmarks.worker_latency

bench-tracking: $(STAMP) ## SORT / ByteTrack / DeepSORT quality and speed on MOT data
	$(PY) -m benchmarks.tracking_mot

bench-autoscaling: $(STAMP) toolchain ## SLO breach -> replicas patched, with real worker processes
	$(PY) -m benchmarks.autoscaling_reaction

bench-cascade: $(STAMP) ## edge->cloud cascade: upstream bytes per camera-hour vs streaming video, added latency
	$(PY) -m benchmarks.cascade_bandwidth

bench-fleet: $(STAMP) toolchain ## 10,000 Cameras on 1,000 kwok-simulated Jetsons: convergence, steady-state writes, churn, site failure, 1 vs 2 shards
	$(PY) -m benchmarks.fleet_scale

bench-reliability: system-packages $(STAMP) toolchain ## chaos, fuzz and soak at full size: benchmarks/results/reliability.{json,md}
	$(PY) -m benchmarks.reliability

# The GPU benchmarks need an NVIDIA GPU (benchmarks/gpu/run_on_device.sh shows how the committed
# results were made on a machine without network); they are not part of `make bench`.
GPU_CLIP := .kubevision/bench/mot17_1080p30_h264.mp4

$(GPU_CLIP):
	bash benchmarks/gpu/make_clip.sh $@

bench-gpu: $(STAMP) ## GPU: detector throughput vs batch (YOLOX-nano; YOLOv8 s/m/l random weights)
	$(PY) -m benchmarks.gpu.detector_throughput

bench-gpu-decode: $(STAMP) $(GPU_CLIP) ## GPU: NVDEC vs CPU decode throughput, N concurrent 1080p streams
	$(PY) -m benchmarks.gpu.decode_throughput --clip $(GPU_CLIP)

# NVDEC ceiling vs the worker's path (benchmarks/gpu/nvdec_on_device.sh runs the same on a machine
# without network): 1080p H.264 clips with and without B-frames; the baseline is capture.py and
# nvdec.py as of NVDEC_BASELINE, the commit before the NVDEC work of issue 15.
NVDEC_DIR := .kubevision/gpu
NVDEC_BASELINE ?= afd3a10
NVDEC_CONFIGS ?= decode@1,4,8,16,32,64;worker-baseline@1,4,16,32,64;worker@1,4,16,32,64,96;\
worker-exact@16,64;worker-baseline/p4@64;worker/p4@64,128;decode/t8@64;bgr-sync@16;rgb@16
NVDEC_IPPP_CONFIGS ?= decode@16,64;worker-baseline@16,64;worker@16,64,96;worker/p4@96

$(NVDEC_DIR)/clip.mp4:
	bash benchmarks/gpu/make_clip.sh $@ 150 2

$(NVDEC_DIR)/clip_ippp.mp4:
	bash benchmarks/gpu/make_clip.sh $@ 150 0

$(NVDEC_DIR)/baseline/nvdec.py:
	mkdir -p $(@D)
	git show $(NVDEC_BASELINE):worker/capture.py > $(@D)/capture.py
	git show $(NVDEC_BASELINE):worker/nvdec.py > $@

bench-gpu-nvdec: $(STAMP) $(NVDEC_DIR)/clip.mp4 $(NVDEC_DIR)/clip_ippp.mp4 $(NVDEC_DIR)/baseline/nvdec.py ## GPU: NVDEC ceiling (decode only) vs the worker's NVDEC path, N streams, same run
	$(PY) -m benchmarks.gpu.nvdec_ceiling --clip $(NVDEC_DIR)/clip.mp4 --name gpu_nvdec_ceiling \
	  --baseline $(NVDEC_DIR)/baseline --configs '$(NVDEC_CONFIGS)' --seconds 4 \
	  --check-videos ../shared/assets/videos/*.mp4
	$(PY) -m benchmarks.gpu.nvdec_ceiling --clip $(NVDEC_DIR)/clip_ippp.mp4 \
	  --name gpu_nvdec_ceiling_ippp --baseline $(NVDEC_DIR)/baseline --configs '$(NVDEC_IPPP_CONFIGS)'

bench-gpu-density: $(STAMP) $(GPU_CLIP) ## GPU: most 30 FPS 1080p streams at p99 <= 100 ms vs the batch-1 loop
	$(PY) -m model_catalog.tools.prepare dynamic ../shared/assets/models/yolox_nano_416.onnx .kubevision/bench/yolox_nano_dynamic.onnx
	$(PY) -m model_catalog.tools.prepare float ../shared/assets/models/mobilenetv2_12_int8.onnx .kubevision/bench/mobilenetv2_12_float.onnx
	$(PY) -m benchmarks.gpu.density --model .kubevision/bench/yolox_nano_dynamic.onnx \
	  --classifier .kubevision/bench/mobilenetv2_12_float.onnx --classifier-precision fp16 \
	  --labels ../shared/assets/models/imagenet_classes.txt --clip $(GPU_CLIP)

demo: $(STAMP) toolchain ## local control plane + operator; apply the samples and show the workers they became
	$(PY) -m tests.envtest demo

cluster-up: $(STAMP) toolchain ## start the local control plane in the background and print how to use it
	$(PY) -m tests.envtest up

cluster-down: ## stop the local control plane (logs are kept)
	@if [ -x $(PY) ]; then $(PY) -m tests.envtest down; fi

cluster-status: ## is the local control plane running?
	$(PY) -m tests.envtest status

fleet-up: $(STAMP) toolchain ## a kwok-simulated fleet (1,000 Jetsons, 100 sites, 20 GPU servers) with the operator and 10,000 Cameras, until Ctrl-C
	$(PY) -m tests.envtest.fleet $(FLEET_ARGS)

# Daemonless OCI builds (mmdebstrap base + buildah) of the Dockerfiles `make test` lints; needs
# root. The smoke test runs them with podman against the local control plane.
images: ## build the operator and CPU worker images without a daemon into .kubevision/images/*.oci.tar
	bash tests/toolchain/images.sh

images-smoke: $(STAMP) toolchain ## build the images, run them: operator on the local cluster, worker on the demo video
	$(PY) -m pytest -p no:cacheprovider -rA tests/integration/smoke_images.py

clean: cluster-down ## remove the venv and local state (the toolchain cache stays)
	rm -rf $(VENV) .kubevision .pytest_cache .mypy_cache .ruff_cache build *.egg-info
