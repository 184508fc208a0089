"""Accuracy of the worker's detection path on real models, against stored baselines.

Each detector runs through the worker's own preprocessing, ONNX Runtime backend, decoder and
NMS on all 128 coco128 images; COCO mAP50-95 (faster-coco-eval) must not drop below
``baselines.json``'s value minus its tolerance, nor below the acceptance floor of the model.
A decoder, letterbox or NMS bug shows up here as lost mAP long before anyone sees it in a
video. Evaluation uses the usual protocol: confidence 0.001, up to 300 boxes per image.

The crop classifier is checked on real crops too: labelled coco128 animals and food must get a
plausible ImageNet top-5.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends import create_backend
from kubevision.worker.classifier import CropClassifier
from kubevision.worker.detector import COCO_CLASSES, Detector
from kubevision.worker.preprocess import Frame
from model_catalog.tools.coco_eval import LabelledImages, coco_map, load_labelled, read_frame
from tests.assets import require

BASELINES = Path(__file__).with_name("baselines.json")
IMAGES = "coco128/images/val2017"
LABELS = "coco128/object_detection/labels/val2017"
EVAL_CONFIDENCE = 0.001
EVAL_NMS_IOU = 0.65
EVAL_MAX_DET = 300
BATCH = 8
"""Frames per detector call, as the orchestrator batches them (the backend splits further for
fixed-batch exports)."""


@dataclass(frozen=True)
class Case:
    key: str
    """Key in baselines.json."""
    path: str
    decoder: str
    size: int
    floor: float | None
    """Acceptance minimum, independent of the stored baseline."""


CASES = (
    Case("yolox_nano_416", "models/yolox_nano_416.onnx", "yolox", 416, 0.33),
    Case("yolov8n_416_fp32", "models/yolov8n_agpl/yolov8n_416_fp32.onnx", "yolov8", 416, 0.36),
    Case("nanodet_m_320", "models/nanodet_m_320.onnx", "nanodet", 320, None),
)


def model_config(
    path: Path, task: str, size: int, decoder: str | None = None, batch_max: int = BATCH
) -> ModelConfig:
    """A ModelConfig as the operator would render it for a local ONNX file."""
    return ModelConfig.model_validate(
        {
            "variant": path.stem.replace("_", "-"),
            "family": path.stem.split("_")[0],
            "task": task,
            "format": "onnx",
            "precision": "fp32",
            "input_size": InputSize(width=size, height=size),
            "decoder": decoder,
            "batch_max": batch_max,
            "artifact": Artifact(uri=path.resolve().as_uri()),
        }
    )


Coco128 = LabelledImages


@pytest.fixture(scope="module")
def coco128() -> Coco128:
    """The 128 images (BGR, as a camera delivers them) and their labels as COCO ground truth
    (the catalog tools' own loader, so the test and the INT8 gate measure alike)."""
    image_dir, label_dir = require(IMAGES), require(LABELS)
    return load_labelled(sorted(image_dir.glob("*.jpg")), label_dir)


def batches(frames: list[Frame]) -> Iterator[list[Frame]]:
    for start in range(0, len(frames), BATCH):
        yield frames[start : start + BATCH]


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_detection_map_holds_baseline(
    case: Case, coco128: Coco128, capsys: pytest.CaptureFixture[str]
) -> None:
    path = require(case.path)
    model = model_config(path, "detect", case.size, case.decoder)
    detector = Detector(
        model, create_backend(model, path), EVAL_CONFIDENCE, EVAL_NMS_IOU, max_det=EVAL_MAX_DET
    )
    start = time.perf_counter()
    detections = [d for batch in batches(coco128.frames) for d in detector(batch)]
    elapsed = time.perf_counter() - start
    map50_95, map50 = coco_map(coco128, detections)
    baseline = json.loads(BASELINES.read_text())[case.key]
    with capsys.disabled():
        print(
            f"\n{case.key}: coco128 mAP50-95 {map50_95:.4f} (baseline {baseline['map50_95']}, "
            f"tolerance {baseline['tolerance']}), mAP50 {map50:.4f}, "
            f"{len(detections)} images in {elapsed:.1f} s"
        )
    assert map50_95 >= baseline["map50_95"] - baseline["tolerance"], (
        f"{case.key} mAP50-95 dropped to {map50_95:.4f} from baseline {baseline['map50_95']}"
    )
    if case.floor is not None:
        assert map50_95 >= case.floor, f"{case.key} mAP50-95 {map50_95:.4f} < {case.floor}"


CLASSIFIER = "models/mobilenetv2_12_int8.onnx"
IMAGENET_LABELS = "models/imagenet_classes.txt"
CROP_CASES = [
    # (coco128 image, COCO class of the labelled box, acceptable ImageNet classes)
    ("000000000285", "bear", {"brown bear", "American black bear", "ice bear"}),
    ("000000001818", "zebra", {"zebra"}),
    ("000000006894", "elephant", {"Indian elephant", "African elephant", "tusker"}),
    ("000000012576", "pizza", {"pizza"}),
    ("000000001675", "cat", {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}),
    ("000000003661", "banana", {"banana"}),
]


def largest_labelled_box(stem: str, class_name: str, frame: Frame) -> npt.NDArray[np.float32]:
    """The largest ground-truth box of a class in a coco128 image, in frame pixels."""
    rows = np.loadtxt(require(LABELS) / f"{stem}.txt", ndmin=2)
    rows = rows[rows[:, 0] == COCO_CLASSES.index(class_name)]
    _, cx, cy, w, h = rows[np.argmax(rows[:, 3] * rows[:, 4])]
    height, width = frame.shape[:2]
    return np.array(
        [
            [
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            ]
        ],
        np.float32,
    )


def test_crop_classifier_top5_is_plausible() -> None:
    """Labelled coco128 objects that ImageNet also has get that class in their top 5, and
    one batched call matches crop-by-crop calls."""
    path = require(CLASSIFIER)
    model = model_config(path, "classify", 224, batch_max=len(CROP_CASES))
    classifier = CropClassifier(
        model, create_backend(model, path), top_k=5, labels_file=require(IMAGENET_LABELS)
    )
    frames = [read_frame(require(IMAGES) / f"{stem}.jpg") for stem, _, _ in CROP_CASES]
    boxes = [
        largest_labelled_box(stem, name, frame)
        for (stem, name, _), frame in zip(CROP_CASES, frames, strict=True)
    ]
    for (stem, name, acceptable), frame, box in zip(CROP_CASES, frames, boxes, strict=True):
        class_ids, scores = classifier(frame, box)
        top5 = classifier.names(class_ids[0])
        assert acceptable & set(top5), f"{stem} {name}: top-5 {top5} has none of {acceptable}"
        assert (np.diff(scores[0]) <= 0).all()
    # several crops of one frame in one call give the same answer as one by one
    frame, box = frames[0], boxes[0]
    several = np.concatenate([box, box * 0.5, box * 0.9])
    class_ids, scores = classifier(frame, several)
    for i, one in enumerate(several):
        single_ids, single_scores = classifier(frame, one[None])
        assert class_ids[i].tolist() == single_ids[0].tolist()
        np.testing.assert_allclose(scores[i], single_scores[0], rtol=1e-4, atol=1e-5)
