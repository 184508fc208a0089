"""The whole analytics chain on real frames: the worker's detector (YOLOX-nano) → ByteTrack with
the detector's thresholds (the catalog variant's ``spec.tracking``) → the crop classifier
(MobileNetV2), over the MOT17-mini sequences, scored against their ground
truth with py-motmetrics. Unlike ``test_tracking_mot`` (public detections), the detections here
are our own, so this holds the detector, tracker and classifier together to a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import tracking_mot as bench
from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.pipeline import TrackerStage
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends.base import create_backend
from kubevision.worker.classifier import CropClassifier
from kubevision.worker.detector import Detector
from kubevision.worker.models import sha256_of
from kubevision.worker.trackers import create_tracker
from tests.assets import assets_dir, require

pytestmark = pytest.mark.filterwarnings("ignore:Operation with tuple is deprecated")
BASELINES = json.loads(Path(__file__).with_name("tracking_baselines.json").read_text())
PIPELINE = BASELINES["MOT17-mini full pipeline"]


def model(path: Path, task: str, size: tuple[int, int], **extra: str) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "variant": path.stem,
            "family": path.stem,
            "task": task,
            "format": "onnx",
            "precision": "fp32",
            "batchMax": 1,
            "inputSize": InputSize(width=size[0], height=size[1]),
            "artifact": Artifact(uri=f"file://{path}", sha256=sha256_of(path)),
            **extra,
        }
    )


def test_detector_tracker_classifier_on_mot17_frames() -> None:
    detector_path = require("models/yolox_nano_416.onnx")
    classifier_path = require("models/mobilenetv2_12_int8.onnx")
    det_model = model(detector_path, "detect", (416, 416), decoder="yolox")
    detector = Detector(
        det_model, create_backend(det_model, detector_path), 0.3, 0.45, classes=["person"]
    )
    cls_model = model(classifier_path, "classify", (224, 224))
    classifier = CropClassifier(
        cls_model,
        create_backend(cls_model, classifier_path),
        labels_file=require("models/imagenet_classes.txt"),
    )
    accumulators, classified = [], 0
    for sequence in bench.MOT17_SEQUENCES:
        seq = assets_dir() / bench.MOT17_MINI / sequence
        tracker = create_tracker(TrackerStage(type="bytetrack"), None, bench.catalog_thresholds())
        read = bench.read_frame(seq)
        lines = []
        for frame in bench.mot17_frames(seq):
            image = read(frame)
            tracked = tracker.update(detector([image])[0], image)
            if len(tracked):
                class_ids, scores = classifier(image, tracked.xyxy)
                assert len(class_ids) == len(tracked)
                assert np.all((scores >= 0) & (scores <= 1))
                classified += len(tracked)
            for box, score, _, track_id in tracked:
                x1, y1, x2, y2 = (float(v) for v in box)
                lines.append(
                    f"{frame},{track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f}"
                )
        accumulators.append(
            bench.accumulate(seq / "gt/gt.txt", "\n".join(lines) + "\n", seq / "seqinfo.ini")
        )
    overall = bench.scores(accumulators, list(bench.MOT17_SEQUENCES))["OVERALL"]
    print(f"full pipeline on MOT17-mini: {overall}, {classified} tracked boxes classified")
    assert classified > 0
    for metric in ("mota", "idf1"):
        assert overall[metric] >= PIPELINE[metric] - BASELINES["tolerance"], (
            f"{metric} fell to {overall[metric]:.4f} from the baseline {PIPELINE[metric]:.4f}"
        )
