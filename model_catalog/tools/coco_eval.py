"""COCO box mAP of a detector run exactly as the worker runs it, on YOLO-format labelled images.

The catalog's accuracy figures, the INT8 accuracy gate (:mod:`.int8_gate`) and
``tests/quality/test_detection_map.py`` all measure through this module: the worker's own
preprocessing, backend, decoder and NMS, then faster-coco-eval's COCO protocol (confidence
0.001, up to 300 boxes per image), so a figure in a manifest means what the worker delivers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from faster_coco_eval import COCO, COCOeval_faster  # type: ignore[import-untyped]

from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends import InferenceBackend, create_backend
from kubevision.worker.detections import Detections
from kubevision.worker.detector import COCO_CLASSES, Detector

Frame = npt.NDArray[np.uint8]
EVAL_CONFIDENCE = 0.001
EVAL_NMS_IOU = 0.65
EVAL_MAX_DET = 300
BATCH = 8
"""Frames per detector call, as the worker's batcher hands them (backends split further)."""


@dataclass(frozen=True)
class LabelledImages:
    """Images (BGR, as a camera delivers them) and their labels as COCO ground truth."""

    image_ids: list[int]
    frames: list[Frame]
    ground_truth: COCO

    def __len__(self) -> int:
        return len(self.frames)


def read_frame(path: Path) -> Frame:
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise ValueError(f"cannot decode {path}")
    return np.asarray(frame, np.uint8)


def load_labelled(image_paths: Sequence[Path], label_dir: Path) -> LabelledImages:
    """Images and their YOLO labels (class, cx, cy, w, h normalised; COCO's 80 class indices,
    so category id = class index + 1). An image without a label file has no objects."""
    image_ids: list[int] = []
    frames: list[Frame] = []
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for index, path in enumerate(image_paths):
        frame = read_frame(path)
        image_id = int(path.stem) if path.stem.isdigit() else index + 1
        height, width = frame.shape[:2]
        image_ids.append(image_id)
        frames.append(frame)
        images.append({"id": image_id, "width": width, "height": height, "file_name": path.name})
        label_file = label_dir / f"{path.stem}.txt"
        rows = np.loadtxt(label_file, ndmin=2) if label_file.exists() else np.empty((0, 5))
        for class_id, cx, cy, w, h in rows:
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(COCO_CLASSES)]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    return LabelledImages(image_ids, frames, COCO(dataset))


def coco_map(data: LabelledImages, detections: Sequence[Detections]) -> tuple[float, float]:
    """(mAP50-95, mAP50) of per-image detections against the ground truth."""
    rows = [
        np.column_stack(
            [
                np.full(len(d), image_id),
                d.xyxy[:, :2],
                d.xyxy[:, 2:] - d.xyxy[:, :2],
                d.scores,
                d.class_ids + 1,
            ]
        )
        for image_id, d in zip(data.image_ids, detections, strict=True)
    ]
    stacked = np.concatenate(rows) if rows else np.empty((0, 7))
    if len(stacked) == 0:
        return 0.0, 0.0  # nothing detected: COCOeval cannot load an empty result
    results = data.ground_truth.loadRes(stacked.astype(np.float64))
    evaluation = COCOeval_faster(data.ground_truth, results, "bbox", print_function=lambda *_: None)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def batches(frames: Sequence[Frame], size: int = BATCH) -> Iterator[Sequence[Frame]]:
    for start in range(0, len(frames), size):
        yield frames[start : start + size]


def local_model(
    path: Path,
    task: str,
    size: int,
    decoder: str | None = None,
    batch_max: int = BATCH,
    model_format: str = "onnx",
    precision: str = "fp32",
) -> ModelConfig:
    """A ModelConfig as the operator would render it for a local model file."""
    return ModelConfig.model_validate(
        {
            "variant": path.stem.replace("_", "-"),
            "family": path.stem.split("_")[0],
            "task": task,
            "format": model_format,
            "precision": precision,
            "input_size": InputSize(width=size, height=size),
            "decoder": decoder,
            "batch_max": batch_max,
            "artifact": Artifact(uri=path.resolve().as_uri()),
        }
    )


def evaluation_detector(model: ModelConfig, backend: InferenceBackend) -> Detector:
    """The worker's detector at the COCO protocol's thresholds."""
    return Detector(model, backend, EVAL_CONFIDENCE, EVAL_NMS_IOU, max_det=EVAL_MAX_DET)


def detect_all(detector: Detector, frames: Sequence[Frame]) -> list[Detections]:
    return [d for batch in batches(frames) for d in detector(list(batch))]


def evaluate_onnx(
    path: Path, decoder: str, size: int, data: LabelledImages, threads: int | None = None
) -> tuple[float, float]:
    """(mAP50-95, mAP50) of an ONNX detector in ONNX Runtime on CPU."""
    model = local_model(path, "detect", size, decoder)
    backend = create_backend(model, path, intra_op_threads=threads, choice="onnxruntime")
    return coco_map(data, detect_all(evaluation_detector(model, backend), data.frames))
