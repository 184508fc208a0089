"""Fit a detector's tracker thresholds (ModelVariant ``spec.tracking``) to its score distribution.

    python -m model_catalog.tools.tracking_thresholds MODEL.onnx --decoder yolox --size 416 \
        --images ../shared/assets/coco128/images/val2017 \
        --labels ../shared/assets/coco128/object_detection/labels/val2017

Runs the detector as the worker does (its preprocessing, decoder and NMS, confidence 0.05) on
labelled calibration images and splits its boxes of one class (COCO person by default) into
true positives (matched greedily by score to an unmatched label at IoU >= 0.5) and false
positives. The rule, the same for every detector:

* ``highScore`` = the score cut with the best F1 between true and false boxes: above it a box
  is more likely a person than not, so it may start and carry a track (ByteTrack's
  ``track_thresh``; its authors' 0.6 fits their YOLOX-x, whose people score near 1);
* ``newTrackScore`` = ``highScore``: the reference adds 0.1 (``det_thresh``), tuned with that
  YOLOX-x on MOT17; with the catalog's nano detectors the margin only loses people (chain on
  MOT17-mini, ByteTrack: MOTA 0.218 -> 0.241 with YOLOX-nano, 0.204 -> 0.231 with YOLOv8n),
  and a new track still has to be matched ``minHits`` times before it is reported;
* ``lowScore`` = 0.1 (the reference's), or half of ``highScore`` if that is lower;
* ``matchIou`` = 0.3, the references' value (box jitter was not found to need another).

Prints the ``tracking:`` block to paste into the variant's manifest.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from kubevision.api.modelvariant import Artifact, InputSize, TrackingThresholds
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends import create_backend
from kubevision.worker.detector import Detector
from kubevision.worker.trackers.base import iou

Scores = npt.NDArray[np.float32]
Boxes = npt.NDArray[np.float64]
CALIBRATION_CONFIDENCE = 0.05
MIN_IOU = 0.5


def true_positives(xyxy: Boxes, scores: Scores, labels: Boxes) -> npt.NDArray[np.bool_]:
    """Which boxes match a label: best score first, each label at most once, IoU >= 0.5."""
    hit = np.zeros(len(scores), bool)
    if len(labels) == 0:
        return hit
    overlap = iou(xyxy, labels)
    free = np.ones(len(labels), bool)
    for i in np.argsort(-scores, kind="stable"):
        candidates = np.where(free, overlap[i], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= MIN_IOU:
            hit[i], free[best] = True, False
    return hit


def f1_best_score(true: Scores, false: Scores) -> float:
    """The score cut (0.05-0.95, step 0.01) with the best F1 of true vs false boxes."""
    if len(true) == 0:
        raise ValueError("no true positives: the calibration set has no matching labels")
    cuts = np.round(np.arange(0.05, 0.951, 0.01), 2)
    kept_true = (true[None, :] >= cuts[:, None]).sum(axis=1)
    kept = kept_true + (false[None, :] >= cuts[:, None]).sum(axis=1)
    precision = kept_true / np.maximum(kept, 1)
    recall = kept_true / len(true)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    return float(cuts[int(np.argmax(f1))])


def fit(true: Scores, false: Scores, calibration: str) -> TrackingThresholds:
    """Thresholds from true and false positive scores (see the module docstring)."""
    high = f1_best_score(true, false)
    return TrackingThresholds(
        high_score=high,
        low_score=round(min(0.1, high / 2), 3),
        new_track_score=high,
        match_iou=0.3,
        calibration=f"{calibration}: {len(true)} true / {len(false)} false boxes, "
        f"true median {float(np.median(true)):.2f}, F1-best score {high:.2f}",
    )


def labelled_images(
    images: Path, labels: Path, class_id: int
) -> Iterator[tuple[npt.NDArray[np.uint8], Boxes]]:
    """(BGR image, xyxy pixel labels of ``class_id``) for every image; YOLO-format labels."""
    for path in sorted(images.glob("*.jpg")):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(path)
        height, width = image.shape[:2]
        label_file = labels / f"{path.stem}.txt"
        rows = np.loadtxt(label_file, ndmin=2) if label_file.exists() else np.empty((0, 5))
        rows = rows[rows[:, 0] == class_id]
        cx, cy, w, h = (
            rows[:, 1] * width,
            rows[:, 2] * height,
            rows[:, 3] * width,
            rows[:, 4] * height,
        )
        yield (
            image.astype(np.uint8),
            np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]),
        )


def detector(
    model: Path,
    decoder: str,
    size: int,
    class_name: str,
    confidence: float = CALIBRATION_CONFIDENCE,
) -> Detector:
    """The worker's detector for a local ONNX file, one class kept."""
    config = ModelConfig(
        variant=model.stem.replace("_", "-"),
        family=model.stem.split("_")[0],
        task="detect",
        format="onnx",
        precision="fp32",
        input_size=InputSize(width=size, height=size),
        decoder=decoder,
        batch_max=1,
        artifact=Artifact(uri=model.resolve().as_uri()),
    )
    backend = create_backend(config, model)
    return Detector(config, backend, confidence, 0.45, classes=[class_name])


def measure(run: Detector, images: Path, labels: Path, class_id: int) -> tuple[Scores, Scores]:
    """True and false positive scores of the detector's boxes on the calibration set."""
    true, false = [], []
    for image, wanted in labelled_images(images, labels, class_id):
        found = run([image])[0]
        hit = true_positives(found.xyxy.astype(np.float64), found.scores, wanted)
        true.append(found.scores[hit])
        false.append(found.scores[~hit])
    return np.concatenate(true), np.concatenate(false)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--decoder", required=True, choices=["yolox", "yolov8", "nanodet"])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--class-id", type=int, default=0, help="label class (COCO person: 0)")
    parser.add_argument("--class-name", default="person")
    args = parser.parse_args()
    run = detector(args.model, args.decoder, args.size, args.class_name)
    true, false = measure(run, args.images, args.labels, args.class_id)
    name = f"{args.images.parent.parent.name} {args.class_name}s"
    thresholds = fit(true, false, name)
    print("  tracking:")
    for key, value in thresholds.model_dump(by_alias=True).items():
        print(f"    {key}: {value!r}" if isinstance(value, str) else f"    {key}: {value}")


if __name__ == "__main__":
    main()
