"""Benchmark: DeepSORT's re-id per frame on the GPU beside ONNX Runtime on the host's CPU.

MOT17-mini's 27 frames (1080p, MOT17-05 640x480) with their public detections scoring >= 0.3
(deep_sort's min_confidence), each frame's crops embedded in one call:
ONNX Runtime on the CPU (every core of the machine), the worker's torch backend on CUDA in FP16
from a host frame (crops cut by OpenCV, uploaded) and from a device frame (crops cut on the GPU,
as from NVDEC). Timed: one frame's call, crops to host embeddings (a GPU call synchronises
when its embeddings come back); reading the JPEG and uploading a device frame are not.

    python -m benchmarks.gpu.reid_cost --out DIR   (benchmarks/gpu/reid_on_device.sh)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from benchmarks.common import machine, write_results
from kubevision.worker.trackers.reid import ReidEmbedder
from model_catalog.tools.reid_dynamic import batch_safe
from tests.assets import assets_dir, read_image

MIN_SCORE = 0.3
SEQUENCES = ["MOT17-02-FRCNN", "MOT17-04-FRCNN", "MOT17-05-FRCNN", "MOT17-09-FRCNN",
             "MOT17-10-FRCNN"]  # fmt: skip
MODELS = {
    "person-reid-retail-0288": "models/person_reid_retail_0288.onnx",
    "osnet_x0_25_msmt17": "models/osnet_x0_25_msmt17.onnx",
}
REPEATS = 5


def frames() -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR frame, xyxy of its detections >= MIN_SCORE) for every MOT17-mini frame."""
    out = []
    for name in SEQUENCES:
        seq = assets_dir() / "mot/MOT17-mini" / name
        rows = np.loadtxt(seq / "det/det.txt", delimiter=",", ndmin=2)
        for image in sorted((seq / "img1").glob("*.jpg")):
            r = rows[(rows[:, 0] == int(image.stem)) & (rows[:, 6] >= MIN_SCORE)]
            xyxy = np.column_stack([r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5]])
            out.append((read_image(image), xyxy.astype(np.float32)))
    return out


def timed(
    call: Callable[[Any, np.ndarray], np.ndarray], inputs: list[tuple[Any, np.ndarray]]
) -> dict[str, float]:
    """ms per frame (mean, p95) over REPEATS passes, after one warm-up pass."""
    for pixels, boxes in inputs:
        call(pixels, boxes)
    ms = []
    for _ in range(REPEATS):
        for pixels, boxes in inputs:
            start = time.perf_counter()
            call(pixels, boxes)
            ms.append(1000 * (time.perf_counter() - start))
    ms.sort()
    return {"mean_ms": round(statistics.fmean(ms), 2), "p95_ms": round(ms[int(0.95 * len(ms))], 2)}


def measure() -> dict[str, Any]:
    host = frames()
    device = [(torch.from_numpy(f).cuda(), b) for f, b in host]
    torch.cuda.synchronize()
    result: dict[str, Any] = {
        "hardware": machine(),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "frames": len(host),
        "people_per_frame": round(statistics.fmean(len(b) for _, b in host), 1),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, relative in MODELS.items():
            path = assets_dir() / relative
            if "retail" in label:  # the OMZ export has a fixed batch of 1
                path = Path(tmp) / path.name
                onnx.save(batch_safe(onnx.load(str(assets_dir() / relative))), str(path))
            cpu = ReidEmbedder(path, ("CPUExecutionProvider",))
            gpu = ReidEmbedder(path, device="cuda")
            rows = {
                "onnxruntime_cpu": timed(cpu, host),
                "torch_cuda_fp16_host_frame": timed(gpu, host),
                "torch_cuda_fp16_device_frame": timed(gpu, device),
            }
            base = rows["onnxruntime_cpu"]["mean_ms"]
            for row in rows.values():
                row["speedup_vs_cpu"] = round(base / row["mean_ms"], 1)
            result["models"][label] = rows
    return result


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# DeepSORT re-id per frame: GPU ({r['gpu']}) beside ONNX Runtime on the CPU",
        "",
        f"Host: {r['hardware']}; torch {r['torch']}. MOT17-mini, {r['frames']} frames, public "
        f"detections >= {MIN_SCORE} ({r['people_per_frame']} people per frame), every frame's "
        "crops in one call; timed: crops to host embeddings (JPEG decode and the device frame's "
        "upload left out). `python -m benchmarks.gpu.reid_cost`.",
        "",
        "| model | runtime | ms/frame mean | ms/frame p95 | vs CPU |",
        "|---|---|---:|---:|---:|",
    ]
    for model, rows in r["models"].items():
        for runtime, v in rows.items():
            lines.append(
                f"| {model} | {runtime} | {v['mean_ms']} | {v['p95_ms']} | {v['speedup_vs_cpu']}x |"
            )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    args = parser.parse_args()
    result = measure()
    write_results(args.out, "gpu_reid_cost", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
