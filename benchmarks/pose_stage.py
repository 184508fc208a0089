"""The pose stage: keypoint accuracy without COCO keypoint annotations, and what it costs.

YOLOv8n-pose INT8 (OpenVINO IR, AGPL test data) through ``worker/pose.py`` on the 73 coco128
images with people. Accuracy (``model_catalog/tools/pose_eval.py``): OKS agreement with an
independent re-implementation of Ultralytics' decode of the same model, and person-box AP and
keypoint containment against coco128's labelled person boxes. Cost: the pose stage per frame
(letterbox, OpenVINO, decode, NMS, mapping back), p50/p99 over the frames after a warm-up,
beside the worker's YOLOX-nano detector stage on the same frames in the same run (the
baseline: what a Pipeline without pose spends per frame), 2 threads each.

    python -m benchmarks.pose_stage     # writes benchmarks/results/pose_stage.{json,md}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, write_results
from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends import create_backend
from kubevision.worker.detector import Detector
from kubevision.worker.pose import PoseEstimator
from model_catalog.tools.coco_eval import local_model, read_frame
from model_catalog.tools.pose_eval import (
    ReferenceDecode,
    agreement,
    keypoints_inside,
    labelled_people,
    person_ap,
    person_images,
)
from tests.assets import assets_dir

POSE = "models/yolov8n_agpl/yolov8n-pose_int8_openvino_model/yolov8n-pose.xml"
DETECTOR = "models/yolox_nano_416.onnx"
THREADS, WARMUP = 2, 5


def timed(call: Callable[[np.ndarray], object], frames: list[np.ndarray]) -> dict[str, float]:
    for frame in frames[:WARMUP]:
        call(frame)
    times = []
    for frame in frames:
        start = time.perf_counter()
        call(frame)
        times.append(time.perf_counter() - start)
    return {
        "p50_ms": round(float(np.percentile(times, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(times, 99)) * 1000, 1),
    }


def main() -> None:
    assets = assets_dir().resolve()
    images = assets / "coco128/images/val2017"
    labels_dir = assets / "coco128/object_detection/labels/val2017"
    paths = person_images(images, labels_dir)
    frames = [read_frame(p) for p in paths]
    labels = [
        labelled_people(labels_dir / f"{p.stem}.txt", f.shape[1], f.shape[0])
        for p, f in zip(paths, frames, strict=True)
    ]
    xml = assets / POSE
    model = ModelConfig(
        variant="yolov8n-pose-640-openvino-int8", family="yolov8n-pose", task="pose",
        format="openvino", precision="int8", input_size=InputSize(width=640, height=640),
        batch_max=1, artifact=Artifact(uri=xml.as_uri()),
    )  # fmt: skip
    pose = PoseEstimator(model, create_backend(model, xml, intra_op_threads=THREADS))
    ours = [pose([f])[0] for f in frames]
    reference = ReferenceDecode(xml, threads=THREADS)
    agree = agreement(ours, [reference(f) for f in frames])
    sizes = [(f.shape[1], f.shape[0]) for f in frames]
    ap, ap50 = person_ap(ours, sizes, labels)
    inside, total = keypoints_inside(ours, labels)
    detector_path = assets / DETECTOR
    det_model = local_model(detector_path, "detect", 416, "yolox", batch_max=1)
    detector = Detector(  # the worker's default thresholds (a Pipeline's detector stage)
        det_model, create_backend(det_model, detector_path, intra_op_threads=THREADS), 0.25, 0.45
    )
    cost_pose = timed(lambda f: pose([f]), frames)
    cost_detector = timed(lambda f: detector([f]), frames)
    result: dict[str, Any] = {
        "hardware": machine(),
        "model": "YOLOv8n-pose INT8, OpenVINO IR, 640x640 (AGPL test data)",
        "images": len(frames),
        "agreement_with_reference": asdict(agree),
        "person_box_ap50_95": round(ap, 4),
        "person_box_ap50": round(ap50, 4),
        "visible_keypoints_inside_labelled_box": [inside, total],
        "pose_stage": cost_pose,
        "detector_stage_baseline": cost_detector,
        "pose_over_detector_p50": round(cost_pose["p50_ms"] / cost_detector["p50_ms"], 2),
    }
    md = "\n".join(
        [
            "# Pose stage: keypoint accuracy and cost",
            "",
            f"Hardware: {result['hardware']}, {THREADS} threads. Model: {result['model']}, "
            f"through `worker/pose.py` on the {len(frames)} coco128 images with people. "
            "COCO has no keypoint labels in our assets, so the keypoints are checked against "
            "an independent re-implementation of Ultralytics' decode of the same model "
            "(LetterBox, torchvision NMS, scale_boxes/scale_coords; "
            "`model_catalog/tools/pose_eval.py`) by COCO OKS, and the people against coco128's "
            "labelled person boxes. Cost: one frame per call (letterbox, inference, decode, "
            "NMS, mapping back), beside the worker's YOLOX-nano 416 detector stage on the same "
            "frames in the same run.",
            "",
            "| check | value |",
            "|---|---|",
            "| people the reference finds / the worker matches (IoU >= 0.5) | "
            f"{agree.people} / {agree.matched} |",
            f"| OKS worker vs reference, mean / min | {agree.mean_oks:.4f} / {agree.min_oks:.4f} |",
            f"| person box AP50-95 / AP50 vs coco128 labels | {ap:.3f} / {ap50:.3f} |",
            "| visible keypoints inside their labelled person box (+10 %) | "
            f"{inside}/{total} ({inside / max(total, 1):.1%}) |",
            "",
            "| stage | p50 ms/frame | p99 ms/frame |",
            "|---|---|---|",
            "| pose (YOLOv8n-pose INT8 640, OpenVINO) | "
            f"{cost_pose['p50_ms']} | {cost_pose['p99_ms']} |",
            "| detector baseline (YOLOX-nano 416, ONNX Runtime) | "
            f"{cost_detector['p50_ms']} | {cost_detector['p99_ms']} |",
            "",
            f"The pose stage adds {cost_pose['p50_ms']} ms per frame with people at p50, "
            f"{result['pose_over_detector_p50']}x the detector stage. It runs only on frames "
            "that hold person tracks.",
            "",
            "Reproduce: `python -m benchmarks.pose_stage`.",
            "",
        ]
    )
    write_results(Path(__file__).parent / "results", "pose_stage", result, md)


if __name__ == "__main__":
    main()
