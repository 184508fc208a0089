"""Benchmark: crop-classifier calls whose batch size changes every call, on one GPU.

The finishing thread classifies the due crops of a whole detected batch in one call, so the
batch size is whatever number of tracks is due: a different shape nearly every call. Model: the
catalog's MobileNetV2 (``prepare float`` of the INT8 export) at 224x224, FP16. Input: random
crops already on the device, counts drawn uniformly from 1..``--max-crops``; the same
sequence is played twice, cold (each count seen for the first time) and warm.

Timed: each call until the device is idle (``torch.cuda.synchronize``). Rows:

- baseline: the ONNX model converted by onnx2torch and called directly (eager, FP16), what a
  user writes first; its flatten computes the target shape on the GPU every call;
- ``TorchBackend`` without CUDA graphs: the reshape folded, eager calls padded to
  power-of-two buckets;
- ``TorchBackend`` with CUDA graphs (what the worker runs).

    python -m benchmarks.gpu.classifier_calls --model FLOAT.onnx [--out benchmarks/results]

writes ``gpu_classifier_calls.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx2torch import convert

from benchmarks.common import machine, write_results
from benchmarks.gpu.density import gpu_name
from kubevision.worker.backends.pytorch import TorchBackend

RESULTS = Path(__file__).resolve().parents[1] / "results"
NAME = "gpu_classifier_calls"
INPUT = (3, 224, 224)

Call = Callable[[torch.Tensor], object]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain(path: Path, device: torch.device, dtype: torch.dtype) -> Call:
    module = convert(onnx.load(str(path))).eval().to(device, dtype)

    def call(batch: torch.Tensor) -> object:
        with torch.inference_mode():
            return module(batch.to(dtype))

    return call


def _backend(path: Path, device: torch.device, precision: str, graphs: bool, top: int) -> Call:
    backend = TorchBackend.from_onnx(
        path, device=str(device), precision=precision,
        max_batch=top, cuda_graphs=graphs,
    )  # fmt: skip
    return backend.infer_tensor


def _play(call: Call, counts: list[int], crops: torch.Tensor) -> list[float]:
    """Milliseconds of each call, device idle before and after."""
    times = []
    for count in counts:
        _sync(crops.device)
        start = time.perf_counter()
        call(crops[:count])
        _sync(crops.device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(call: Call, counts: list[int], crops: torch.Tensor) -> dict[str, Any]:
    """Cold pass then warm pass over the same counts."""
    cold = _play(call, counts, crops)
    warm = _play(call, counts, crops)
    total = sum(counts)
    row = {
        "calls": len(counts),
        "crops": total,
        "cold_total_ms": round(sum(cold), 1),
        "cold_max_ms": round(max(cold), 2),
        "warm_mean_ms": round(float(np.mean(warm)), 3),
        "warm_p99_ms": round(float(np.percentile(warm, 99)), 3),
        "warm_us_per_crop": round(sum(warm) / total * 1000, 1),
    }
    return row


def markdown(result: dict[str, Any]) -> str:
    base = result["rows"][0]
    lines = [
        "# Crop classifier calls with a varying batch size",
        "",
        f"GPU: {result['gpu']}. Host: {result['host']}. torch {result['torch']}.",
        f"Model: MobileNetV2 ({result['model']}), {INPUT[1]}x{INPUT[2]}, FP16. "
        f"{result['rows'][0]['calls']} calls, crop counts uniform in 1..{result['max_crops']} "
        "(seed 0), crops already on the device; each call timed until the device is idle. "
        "Cold: the sequence's first play (every count new to the model); warm: the same "
        "sequence again. Build: loading, converting and (graphs) capturing every bucket.",
        "",
        "| configuration | build s | cold total ms | cold worst call ms | warm mean ms "
        "| warm p99 ms | warm us per crop | warm x baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ratio = base["warm_us_per_crop"] / row["warm_us_per_crop"]
        lines.append(
            f"| {row['configuration']} | {row['build_s']} | {row['cold_total_ms']} "
            f"| {row['cold_max_ms']} "
            f"| {row['warm_mean_ms']} | {row['warm_p99_ms']} | {row['warm_us_per_crop']} "
            f"| {ratio:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="`prepare float` MobileNetV2")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--max-crops", type=int, default=64)
    parser.add_argument("--device", default="cuda:0", help="cpu only for a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision = "fp16" if device.type == "cuda" else "fp32"
    dtype = torch.float16 if precision == "fp16" else torch.float32
    counts = np.random.default_rng(0).integers(1, args.max_crops + 1, args.calls).tolist()
    crops = torch.randn((args.max_crops, *INPUT), device=device)
    configurations: list[tuple[str, Callable[[], Call]]] = [
        ("baseline: onnx2torch module, eager", lambda: _plain(args.model, device, dtype)),
        (
            "TorchBackend, eager, buckets",
            lambda: _backend(args.model, device, precision, False, args.max_crops),
        ),
        (
            "TorchBackend, CUDA graphs",
            lambda: _backend(args.model, device, precision, True, args.max_crops),
        ),
    ]
    rows = []
    for name, build in configurations:
        start = time.perf_counter()
        call = build()
        built = round(time.perf_counter() - start, 2)
        rows.append({"configuration": name, "build_s": built, **measure(call, counts, crops)})
        print(rows[-1], flush=True)
    result = {
        "gpu": gpu_name(),
        "host": machine(),
        "torch": torch.__version__,
        "model": args.model.name,
        "max_crops": args.max_crops,
        "rows": rows,
    }
    write_results(args.out, NAME, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
