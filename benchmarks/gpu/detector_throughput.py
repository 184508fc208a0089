"""Benchmark: detector throughput vs batch size on one GPU, through KubeVision's torch backend.

Models: YOLOX-nano at 416 (the real, official weights: the shared ONNX export made
dynamic-batch with ``model_catalog.tools.prepare dynamic``, converted by onnx2torch) and
YOLOv8 s/m/l at 640 built from their architecture definition with RANDOM weights
(:mod:`benchmarks.gpu.yolov8_arch`: speed figures only, never accuracy). Each runs in
:class:`kubevision.worker.backends.pytorch.TorchBackend` in FP32 and FP16, with CUDA graphs off
and on, at batch 1, 2, 4, ..., 128.

Timed: one ``infer_tensor`` call per batch on an input already on the GPU, until the device is
idle (``torch.cuda.synchronize``) -- the model forward plus the backend's input cast/layout copy
and its float32 output copies; no decoding, no preprocessing, no host-to-device copy. Each point
gets a warm-up and then an equal share of a fixed time budget. Every row carries its ratio to
the baseline a user would run first: the same module called directly, FP32, eager, batch 1.

    python -m benchmarks.gpu.detector_throughput [--budget-s 120] [--out benchmarks/results]
    python -m benchmarks.gpu.detector_throughput --device cpu --quick --out /tmp/smoke

writes ``gpu_detector_throughput.{json,md}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx2torch import convert
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import machine, write_results
from benchmarks.gpu.yolov8_arch import build
from kubevision.worker.backends.pytorch import TorchBackend
from model_catalog.tools.prepare import make_dynamic
from tests.assets import ENV_VAR, assets_dir

RESULTS = Path(__file__).resolve().parents[1] / "results"
CACHE = Path(os.environ.get("KUBEVISION_CACHE", Path.home() / ".cache" / "kubevision")) / "models"
YOLOX_ASSET = "models/yolox_nano_416.onnx"
NAME = "gpu_detector_throughput"
BATCHES = tuple(1 << i for i in range(8))  # 1 .. 128
QUICK_BATCHES = (1, 2)
DENSE_FP16_TFLOPS = (("PCIE", 756.0), ("NVL", 835.0), ("H100", 989.0), ("H200", 989.0))
"""Dense (no sparsity) FP16 tensor-core peaks from NVIDIA's datasheets, matched in order
against the upper-cased device name: H100 PCIe, H100 NVL, then H100 SXM and H200."""
WARMUP_FRACTION = 0.2
"""Share of a point's time spent warming up (cuDNN picks algorithms on first calls)."""
MIN_WARMUP_CALLS = 2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked detector: how to load it plainly and inside the backend."""

    name: str
    weights: str
    input_size: int
    pixel_scale: float
    """Input value range (255 for raw pixels, 1 for unit range): realistic activations."""
    load: Callable[[], nn.Module]
    backend: Callable[..., TorchBackend]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)

    def example(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.rand((batch, *self.input_shape), device=device) * self.pixel_scale


@dataclass(frozen=True)
class Timing:
    """Per-call wall times (seconds) of one measured point."""

    batch: int
    seconds: list[float]

    def summary(self) -> dict[str, Any]:
        total = sum(self.seconds)
        ms = np.asarray(self.seconds) * 1000
        return {
            "iterations": len(self.seconds),
            "img_per_s": round(self.batch * len(self.seconds) / total, 1),
            "ms_p50": round(float(np.percentile(ms, 50)), 3),
            "ms_p99": round(float(np.percentile(ms, 99)), 3),
        }


def yolox_onnx(given: Path | None) -> Path:
    """``given``, or the shared YOLOX-nano export made dynamic-batch once into the cache."""
    if given is not None:
        return given
    source = assets_dir() / YOLOX_ASSET
    if not source.exists():
        raise SystemExit(f"{source} is missing: pass --yolox-onnx or set {ENV_VAR}")
    target = CACHE / "yolox_nano_dynamic.onnx"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        onnx.save(make_dynamic(onnx.load(str(source))), str(target))
    return target


def model_specs(yolox: Path) -> dict[str, ModelSpec]:
    """The benchmarked detectors by CLI name; every load builds a fresh FP32 module."""

    def yolov8(scale: str) -> ModelSpec:
        return ModelSpec(
            name=f"YOLOv8{scale}",
            weights="random (seeded; architecture from yolov8.yaml, speed only)",
            input_size=640,
            pixel_scale=1.0,
            load=lambda: build(scale),
            backend=lambda **kw: TorchBackend(build(scale), input_shape=(3, 640, 640), **kw),
        )

    return {
        "yolox-nano": ModelSpec(
            name="YOLOX-nano",
            weights="real (official YOLOX-nano, Apache-2.0)",
            input_size=416,
            pixel_scale=255.0,
            load=lambda: convert(onnx.load(str(yolox))),
            backend=lambda **kw: TorchBackend.from_onnx(yolox, input_shape=(3, 416, 416), **kw),
        ),
        **{f"yolov8{s}": yolov8(s) for s in "sml"},
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    call: Callable[[], object],
    batch: int,
    device: torch.device,
    seconds: float,
    min_iterations: int,
) -> Timing:
    """Warm up, then time ``call`` to device idle, one call at a time, for ``seconds``."""
    warmup_until = time.perf_counter() + seconds * WARMUP_FRACTION
    warmup_calls = 0
    while warmup_calls < MIN_WARMUP_CALLS or time.perf_counter() < warmup_until:
        call()
        synchronize(device)
        warmup_calls += 1
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while len(times) < min_iterations or time.perf_counter() < stop:
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(batch, times)


def gflops_per_image(module: nn.Module, x: torch.Tensor) -> float:
    """Convolution/matmul FLOPs of one image, 2 per multiply-accumulate (as published)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(x[:1])
    return counter.get_total_flops() / 1e9


def measure_baseline(
    spec: ModelSpec, device: torch.device, seconds: float, min_iterations: int
) -> dict[str, Any]:
    """The module as a user first runs it: ``.to(device).eval()``, FP32, NCHW, eager, batch 1."""
    module = spec.load().eval().to(device)
    x = spec.example(1, device)
    with torch.inference_mode():
        timing = time_calls(functools.partial(module, x), 1, device, seconds, min_iterations)
    return {"gflops_per_image": round(gflops_per_image(module, x), 3), **timing.summary()}


def release(device: torch.device) -> None:
    """Free the last model's weights, graphs and buffers before the next one is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sweep(
    spec: ModelSpec,
    precision: str,
    cuda_graphs: bool,
    batches: Sequence[int],
    device: torch.device,
    seconds: float,
    min_iterations: int,
) -> list[dict[str, Any]]:
    """One backend (model, precision, graphs on/off), measured at every batch size."""
    setup_start = time.perf_counter()
    backend = spec.backend(
        device=str(device), precision=precision, max_batch=max(batches), cuda_graphs=cuda_graphs
    )
    setup_s = round(time.perf_counter() - setup_start, 2)
    log.info("%s %s graphs=%s: backend ready in %.1f s", spec.name, precision, cuda_graphs, setup_s)
    rows = []
    for batch in batches:
        call = functools.partial(backend.infer_tensor, spec.example(batch, device))
        timing = time_calls(call, batch, device, seconds, min_iterations)
        rows.append(
            {
                "model": spec.name,
                "precision": backend.precision,
                "cuda_graphs": batch in backend.graph_buckets,
                "batch": batch,
                "backend_setup_s": setup_s,
                **timing.summary(),
            }
        )
        log.info("%s", rows[-1])
    return rows


def peak_fp16_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device).upper()
    return next((tflops for key, tflops in DENSE_FP16_TFLOPS if key in name), None)


def annotate(
    row: dict[str, Any], baseline: dict[str, Any], gflops: float, peak: float | None
) -> None:
    """Achieved TFLOP/s, share of the FP16 dense peak, and speed-up over the baseline."""
    achieved = gflops * row["img_per_s"] / 1e3
    row["tflops"] = round(achieved, 2)
    row["efficiency_pct"] = round(100 * achieved / peak, 2) if peak else None
    row["vs_baseline"] = round(row["img_per_s"] / baseline["img_per_s"], 2)


def driver_version() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (no nvidia-smi)"
    query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
    answer = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    return answer.stdout.strip().splitlines()[0] if answer.returncode == 0 else "unknown"


def environment(device: torch.device, peak: float | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "host": machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "peak_fp16_dense_tflops": peak,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
            "driver": driver_version(),
        }
    return info


def measure(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    specs = model_specs(yolox_onnx(args.yolox_onnx))
    chosen = [specs[name] for name in args.models]
    batches = QUICK_BATCHES if args.quick else BATCHES
    precisions = args.precisions or (["fp32"] if device.type == "cpu" else ["fp32", "fp16"])
    graph_modes = [False, True] if device.type == "cuda" else [False]
    points = len(chosen) * (1 + len(precisions) * len(graph_modes) * len(batches))
    seconds = args.budget_s / points
    min_iterations = 2 if args.quick else 5
    peak = peak_fp16_tflops(device, args.peak_tflops)

    baselines = {}
    for spec in chosen:
        baselines[spec.name] = measure_baseline(spec, device, seconds, min_iterations)
        release(device)
    rows = []
    for spec in chosen:
        base = baselines[spec.name]
        for precision in precisions:
            for graphs in graph_modes:
                for row in sweep(spec, precision, graphs, batches, device, seconds, min_iterations):
                    annotate(row, base, base["gflops_per_image"], peak)
                    rows.append(row)
    return {
        "benchmark": "detector throughput vs batch size (TorchBackend)",
        "environment": environment(device, peak),
        "timed": "one TorchBackend.infer_tensor call per batch on a float32 input tensor already "
        "on the device, until the device is idle (torch.cuda.synchronize): model forward plus "
        "the backend's input cast/layout copy and float32 output copies. No H2D copy, no "
        "preprocessing, no decoding/NMS. Warm-up first; then an equal share of the time budget "
        "per point; img/s = batch x calls / summed call time",
        "baseline": "per model: the plain module .to(device).eval() called under "
        "torch.inference_mode(), FP32, NCHW, eager, batch 1 (what a user runs first)",
        "efficiency": "GFLOPs/image x img/s / dense FP16 tensor-core peak (also for FP32 rows); "
        "GFLOPs counted by torch FlopCounterMode, 2 FLOPs per multiply-accumulate",
        "fp32_note": "FP32 rows run PyTorch's defaults: cuDNN may use TF32 for convolutions "
        "when cudnn_allow_tf32 is true",
        "budget_s": args.budget_s,
        "seconds_per_point": round(seconds, 3),
        "quick": args.quick,
        "models": [
            {
                "model": s.name,
                "weights": s.weights,
                "input": list(s.input_shape),
                "gflops_per_image": baselines[s.name]["gflops_per_image"],
            }
            for s in chosen
        ],
        "baselines": baselines,
        "rows": rows,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    where = (
        f"{env['gpu']} ({env['sms']} SMs, {env['gpu_memory_gib']} GiB), driver {env['driver']}"
        if "gpu" in env
        else f"CPU ({env['host']})"
    )
    lines = [
        "# Detector throughput vs batch size",
        "",
        f"Device: {where}. torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"Python {env['python']}; host {env['host']}.",
        "",
        f"Timed: {result['timed']}. Baseline: {result['baseline']}. Efficiency: "
        f"{result['efficiency']}; peak used: {_cell(env['peak_fp16_dense_tflops'])} TFLOP/s. "
        f"{result['fp32_note']} (here: {env['cudnn_allow_tf32']}); cuDNN benchmark mode: "
        f"{env['cudnn_benchmark']}. "
        f"Budget {result['budget_s']} s of timed calls ({result['seconds_per_point']} s per "
        f"point); whole run {result['elapsed_s']} s.",
        "",
        "| model | weights | input | GFLOPs/img | baseline img/s | baseline ms p50/p99 |",
        "|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        b = result["baselines"][m["model"]]
        lines.append(
            f"| {m['model']} | {m['weights']} | {'x'.join(map(str, m['input']))} | "
            f"{m['gflops_per_image']} | {b['img_per_s']} | {b['ms_p50']}/{b['ms_p99']} |"
        )
    for m in result["models"]:
        lines += [
            "",
            f"## {m['model']} ({m['weights']})",
            "",
            "| precision | CUDA graphs | batch | img/s | ms/batch p50 | p99 | calls | TFLOP/s "
            "| % FP16 peak | x baseline |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in result["rows"] if r["model"] == m["model"]):
            lines.append(
                f"| {r['precision']} | {'on' if r['cuda_graphs'] else 'off'} | {r['batch']} | "
                f"{r['img_per_s']} | {r['ms_p50']} | {r['ms_p99']} | {r['iterations']} | "
                f"{r['tflops']} | {_cell(r['efficiency_pct'])} | {r['vs_baseline']} |"
            )
    lines += ["", "Reproduce: `python -m benchmarks.gpu.detector_throughput`.", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .json/.md")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds of timed calls over all points (default 120, 4 with --quick); model "
        "loading and graph capture come on top",
    )
    parser.add_argument("--quick", action="store_true", help="batches 1 and 2, a tiny budget")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["yolox-nano", "yolov8s", "yolov8m", "yolov8l"],
        choices=["yolox-nano", "yolov8s", "yolov8m", "yolov8l"],
    )
    parser.add_argument(
        "--precisions", nargs="+", choices=["fp32", "fp16"], help="default fp32 fp16 (CPU: fp32)"
    )
    parser.add_argument(
        "--yolox-onnx", type=Path, help="a dynamic-batch YOLOX-nano ONNX (default: prepared)"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its algorithms per shape (PyTorch's default is off)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="dense FP16 peak for the efficiency column where the GPU is not an H100/H200",
    )
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 4.0 if args.quick else 120.0
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (use --device cpu)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    result = measure(args)
    write_results(args.out, NAME, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
