"""INT8 vs FP32 for the catalog's detectors: accuracy against the FP32 parent and speed.

For YOLOX-nano 416 (Apache-2.0) and YOLOv8n 416 (AGPL test data, never bundled), ONNX Runtime
static QDQ INT8 builds are calibrated by ``model_catalog.tools.int8`` on coco128 images 0-63
(and, as the gate's negative control, on 8 blank grey frames), then the parent and each build
are evaluated on the held-out images 64-127 through the worker's detector path (COCO
mAP50-95, faster-coco-eval). Speed: one preprocessed frame per call, 2 intra-op threads,
median and p99 of 200 calls after 20 warm-up calls, FP32 parent in ONNX Runtime as the
baseline measured in the same run; the FP32 model in OpenVINO beside it.

    python -m benchmarks.int8_accuracy        # writes benchmarks/results/int8_detectors.{json,md}
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, write_results
from kubevision.worker.backends.base import InferenceBackend
from kubevision.worker.backends.openvino import OpenVinoBackend
from kubevision.worker.backends.ort import OrtBackend
from kubevision.worker.decoders import decoder_for
from kubevision.worker.preprocess import preprocess
from model_catalog.tools.int8 import gate, image_frames, quantize
from tests.assets import assets_dir

RESULTS = Path(__file__).parent / "results"
CALIBRATION, HELD_OUT_FROM = 64, 64
THREADS, WARMUP, CALLS = 2, 20, 200
DETECTORS = (
    ("YOLOX-nano", "models/yolox_nano_416.onnx", "yolox", 416),
    ("YOLOv8n (AGPL test data)", "models/yolov8n_agpl/yolov8n_416_fp32.onnx", "yolov8", 416),
)


def latency_ms(backend: InferenceBackend, tensor: np.ndarray) -> dict[str, float]:
    for _ in range(WARMUP):
        backend.infer(tensor)
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        backend.infer(tensor)
        times.append(time.perf_counter() - start)
    return {
        "p50_ms": round(float(np.percentile(times, 50)) * 1000, 2),
        "p99_ms": round(float(np.percentile(times, 99)) * 1000, 2),
    }


def measure(name: str, relative: str, decoder: str, size: int, work: Path) -> list[dict[str, Any]]:
    assets = assets_dir()
    parent = assets / relative
    images = assets / "coco128/images/val2017"
    labels = assets / "coco128/object_detection/labels/val2017"
    held_out = sorted(images.glob("*.jpg"))[HELD_OUT_FROM:]
    dataset = f"coco128 images {HELD_OUT_FROM}-127 (held out; calibration: 0-{CALIBRATION - 1})"
    frames = image_frames(images, CALIBRATION)
    blank = [np.full_like(frames[0], 114)] * 8
    tensor = preprocess(frames[:1], size, size, decoder_for(decoder).input_format)[0]
    rows: list[dict[str, Any]] = []
    builds = (("coco128 0-63", frames), ("8 blank frames", blank))
    baseline = latency_ms(OrtBackend(parent, intra_op_threads=THREADS), tensor)
    openvino = latency_ms(OpenVinoBackend(parent, intra_op_threads=THREADS), tensor)
    for calibration, calibration_frames in builds:
        out = work / f"{parent.stem}_int8_{len(rows)}.onnx"
        quantize(parent, out, calibration_frames, decoder, size, "minmax")
        result = gate(parent, out, decoder, size, held_out, labels, dataset, threads=THREADS)
        speed = latency_ms(OrtBackend(out, intra_op_threads=THREADS), tensor)
        rows.append(
            {
                "model": name,
                "input": size,
                "calibration": calibration,
                **asdict(result),
                "loss_points": result.loss_points,
                "fp32_ort": baseline,
                "fp32_openvino": openvino,
                "int8_ort": speed,
                "int8_speedup_p50": round(baseline["p50_ms"] / speed["p50_ms"], 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], hardware: str) -> str:
    lines = [
        "# INT8 vs FP32: accuracy gate and speed (CPU)",
        "",
        f"Hardware: {hardware}, {THREADS} intra-op threads. Builds: ONNX Runtime static QDQ "
        "(per-channel INT8 weights in 7 bits, so CPUs without VNNI do not saturate; UINT8 "
        "activations, minmax; detection head kept FP32) by "
        "`python -m model_catalog.tools.int8 calibrate`. Accuracy: COCO mAP50-95 through the "
        "worker's detector path on coco128 images 64-127, which calibration did not see; the "
        "FP32 parent on the same images is the reference. Budget: 1.0 point. Speed: one "
        f"416x416 frame per call, p50/p99 of {CALLS} calls (model call only); FP32 in ONNX "
        "Runtime is the baseline measured in the same run.",
        "",
        "| model | calibration | FP32 mAP50-95 | INT8 mAP50-95 | lost (points) | accepted | "
        "FP32 ORT p50/p99 ms | FP32 OpenVINO p50/p99 ms | INT8 ORT p50/p99 ms | INT8 speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['calibration']} | {r['parent_value']:.4f} | {r['value']:.4f} "
            f"| {r['loss_points']:.2f} | {'yes' if r['accepted'] else '**no**'} "
            f"| {r['fp32_ort']['p50_ms']}/{r['fp32_ort']['p99_ms']} "
            f"| {r['fp32_openvino']['p50_ms']}/{r['fp32_openvino']['p99_ms']} "
            f"| {r['int8_ort']['p50_ms']}/{r['int8_ort']['p99_ms']} | {r['int8_speedup_p50']}x |"
        )
    lines += ["", "Reproduce: `python -m benchmarks.int8_accuracy`.", ""]
    return "\n".join(lines)


def main() -> None:
    hardware = machine()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for d in DETECTORS for row in measure(*d, Path(tmp))]
    result = {"hardware": hardware, "threads": THREADS, "rows": rows}
    write_results(RESULTS, "int8_detectors", result, markdown(rows, hardware))


if __name__ == "__main__":
    main()
