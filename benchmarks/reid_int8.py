"""Benchmark: an INT8 build of the re-id model beside its FP32 parent, for DeepSORT on the CPU.

DeepSORT's cost on the CPU is the re-id model's (``benchmarks/tracking_mot.py`` part 3). This
asks whether a static INT8 build of person-reid-retail-0288 (dynamic batch) is the way under
5 ms per frame: it is built with the catalog's INT8 settings (``model_catalog.tools.int8``:
QDQ, per-channel INT8 weights in 7 bits, UINT8 activations, MinMax ranges), calibrated on the
crops of MOT17-02 and MOT17-09, and compared with the FP32 model in the same run on the other
three sequences' crops: time per frame and per crop (ONNX Runtime on the CPU, one call per
frame), and the cosine between each crop's INT8 and FP32 embeddings.

    python -m benchmarks.reid_int8        (results: benchmarks/results/reid_int8.{json,md})
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
from onnxruntime.quantization import CalibrationDataReader  # type: ignore[import-untyped]

from benchmarks.common import machine, write_results
from benchmarks.tracking_mot import (
    REPO,
    RESULTS,
    default_assets,
    dynamic_reid,
    reid_requests,
    timing,
)
from kubevision.worker.detections import FloatArray
from kubevision.worker.trackers.base import Image
from kubevision.worker.trackers.reid import ReidEmbedder
from model_catalog.tools.int8 import quantize_model

CALIBRATION = ("MOT17-02-FRCNN", "MOT17-09-FRCNN")
HELD_OUT = ("MOT17-04-FRCNN", "MOT17-05-FRCNN", "MOT17-10-FRCNN")
PASSES = 3
"""Timed passes over the held-out frames (after one warm-up call)."""


class _CropReader(CalibrationDataReader):  # type: ignore[misc]
    """One frame's crops per calibration batch, as the embedder feeds the model (the OMZ
    model takes its BGR 0-255 crops as they are)."""

    def __init__(self, embedder: ReidEmbedder, requests: Sequence[tuple[Image, FloatArray]]):
        name = embedder.session.get_inputs()[0].name
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {name: embedder.crops(image, boxes)} for image, boxes in requests if len(boxes)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def measure(embedder: ReidEmbedder, requests: Sequence[tuple[Image, FloatArray]]) -> dict[str, Any]:
    """ms per frame (one call per frame's crops) and per crop over ``PASSES`` passes."""
    embedder(*requests[0])  # session initialisation
    seconds = []
    for _ in range(PASSES):
        for image, boxes in requests:
            start = time.perf_counter()
            embedder(image, boxes)
            seconds.append(time.perf_counter() - start)
    crops = PASSES * sum(len(b) for _, b in requests)
    return timing(seconds) | {"ms_per_crop": round(1000 * sum(seconds) / crops, 3)}


def benchmark(assets: Path) -> dict[str, Any]:
    fp32_path = dynamic_reid(REPO / ".kubevision/bench", assets)
    int8_path = fp32_path.with_name("person_reid_retail_0288_dynamic_int8.onnx")
    fp32 = ReidEmbedder(fp32_path, ("CPUExecutionProvider",))
    assert not fp32.nchw, "the calibration reader feeds the OMZ model's NHWC BGR crops"
    calibration = _CropReader(fp32, reid_requests(assets, CALIBRATION))
    quantize_model(onnx.load(str(fp32_path)), int8_path, calibration)
    int8 = ReidEmbedder(int8_path, ("CPUExecutionProvider",))
    held_out = reid_requests(assets, HELD_OUT)
    cosine = np.concatenate([(fp32(*r) * int8(*r)).sum(axis=1) for r in held_out if len(r[1])])
    return {
        "hardware": machine(),
        "onnxruntime": ort.__version__,
        "calibration": list(CALIBRATION),
        "held_out": list(HELD_OUT),
        "frames": len(held_out),
        "people_per_frame": round(float(np.mean([len(b) for _, b in held_out])), 1),
        "fp32": measure(fp32, held_out),
        "int8": measure(int8, held_out),
        "cosine": {
            "mean": round(float(cosine.mean()), 4),
            "p1": round(float(np.percentile(cosine, 1)), 4),
            "min": round(float(cosine.min()), 4),
            "crops": len(cosine),
        },
    }


def markdown(result: dict[str, Any]) -> str:
    fp32, int8, cos = result["fp32"], result["int8"], result["cosine"]
    rows = [
        f"| {name} | {r['mean_ms']:.1f} | {r['p95_ms']:.1f} | {r['ms_per_crop']:.2f} | "
        f"{r['ms_per_crop'] / fp32['ms_per_crop']:.2f}x |"
        for name, r in (("FP32 (dynamic batch)", fp32), ("INT8 QDQ (7-bit weights)", int8))
    ]
    return "\n".join(
        [
            "# Re-id on the CPU: person-reid-retail-0288 INT8 beside its FP32 parent "
            "(re-id alone; decode and detection left out)",
            "",
            f"Hardware: {result['hardware']}. ONNX Runtime {result['onnxruntime']}, CPU "
            "execution provider, one call per frame's crops. Input: MOT17-mini public "
            f"detections >= 0.3 on {', '.join(result['held_out'])} ({result['frames']} frames, "
            f"{result['people_per_frame']} people per frame), {PASSES} timed passes; INT8 "
            f"calibrated on {', '.join(result['calibration'])}.",
            "",
            "| model | ms/frame mean | ms/frame p95 | ms/crop | x FP32 |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Embedding cosine INT8 vs FP32 over {cos['crops']} held-out crops: mean "
            f"{cos['mean']:.4f}, 1st percentile {cos['p1']:.4f}, min {cos['min']:.4f}.",
            "",
            "Reproduce: `python -m benchmarks.reid_int8`.",
            "",
        ]
    )


def main() -> None:
    result = benchmark(default_assets())
    write_results(RESULTS, "reid_int8", result, markdown(result))


if __name__ == "__main__":
    main()
