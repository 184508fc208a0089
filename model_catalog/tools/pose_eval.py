"""How right the pose stage is, without COCO keypoint annotations (the shared assets have none).

Two checks, both on coco128 images that hold people:

1. **Agreement with the reference decode.** The same model is run by OpenVINO directly and
   decoded the way Ultralytics' own predictor does it, re-implemented here from its
   published algorithm and independent of the worker's code: ``LetterBox(auto=False)`` (resize
   with ``round``, pad split with the ``-0.1/+0.1`` rounding, grey 114, RGB, /255), the score
   cut 0.25, ``torchvision.ops.nms`` at IoU 0.7, ``scale_boxes``/``scale_coords`` back to the
   frame. Each reference person is matched to the worker's by IoU, and their keypoints are
   compared with COCO's object keypoint similarity (OKS, the per-keypoint sigmas of COCO's
   evaluation, the reference box area as scale, over the keypoints the reference sees).
2. **Against the coco128 annotations.** The person boxes the stage finds are scored against
   coco128's labelled person boxes (COCO AP50-95 and AP50, person class only), and the share
   of visible keypoints (visibility >= 0.5) that fall inside the labelled box of the person
   they belong to (enlarged by 10 %) is counted: a keypoint mapped back with the wrong
   letterbox lands outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from faster_coco_eval import COCO, COCOeval_faster  # type: ignore[import-untyped]
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from kubevision.worker.detections import box_iou
from kubevision.worker.pose import Poses

FloatArray = npt.NDArray[np.float32]
PERSON = 0
OKS_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
     0.89, 0.89], np.float32,
) / 10  # fmt: skip
"""COCO's keypoint sigmas (cocoeval.py), nose to right ankle."""
VISIBLE = 0.5


def person_images(image_dir: Path, label_dir: Path) -> list[Path]:
    """coco128 images with at least one labelled person."""
    out = []
    for path in sorted(image_dir.glob("*.jpg")):
        label = label_dir / f"{path.stem}.txt"
        if label.exists() and (np.loadtxt(label, ndmin=2)[:, 0] == PERSON).any():
            out.append(path)
    return out


def labelled_people(label_file: Path, width: int, height: int) -> FloatArray:
    """(N, 4) xyxy pixel boxes of the labelled people of one image."""
    rows = np.loadtxt(label_file, ndmin=2)
    rows = rows[rows[:, 0] == PERSON]
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


class ReferenceDecode:
    """The pose model run by OpenVINO and decoded as Ultralytics' predictor does (module
    docstring, check 1)."""

    def __init__(self, model_xml: Path, size: int = 640, threads: int = 2) -> None:
        import openvino as ov  # type: ignore[import-untyped]

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads}
        self._compiled = core.compile_model(core.read_model(str(model_xml)), "CPU", config)
        self._size = size

    def __call__(self, frame: npt.NDArray[np.uint8]) -> Poses:
        import torch
        import torchvision

        h0, w0 = frame.shape[:2]
        r = min(self._size / h0, self._size / w0)
        unpad = (round(w0 * r), round(h0 * r))
        dw, dh = (self._size - unpad[0]) / 2, (self._size - unpad[1]) / 2
        image = cv2.resize(frame, unpad, interpolation=cv2.INTER_LINEAR)
        top, bottom = round(dh - 0.1), round(dh + 0.1)
        left, right = round(dw - 0.1), round(dw + 0.1)
        image = cv2.copyMakeBorder(
            image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114)
        )
        x = np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32)
        out = np.asarray(self._compiled(x / 255.0)[0])[0].T  # (anchors, 56)
        out = out[out[:, 4] > 0.25]
        xy, wh = out[:, :2], out[:, 2:4]
        boxes = torch.from_numpy(np.concatenate([xy - wh / 2, xy + wh / 2], axis=1))
        keep = torchvision.ops.nms(boxes, torch.from_numpy(out[:, 4]), 0.7).numpy()
        out, boxes_np = out[keep], boxes.numpy()[keep]
        gain = min(self._size / h0, self._size / w0)
        pad = (round((self._size - w0 * gain) / 2 - 0.1), round((self._size - h0 * gain) / 2 - 0.1))
        boxes_np[:, [0, 2]] = (boxes_np[:, [0, 2]] - pad[0]) / gain
        boxes_np[:, [1, 3]] = (boxes_np[:, [1, 3]] - pad[1]) / gain
        boxes_np[:, [0, 2]] = boxes_np[:, [0, 2]].clip(0, w0)
        boxes_np[:, [1, 3]] = boxes_np[:, [1, 3]].clip(0, h0)
        points = out[:, 5:].reshape(-1, 17, 3).copy()
        points[..., 0] = ((points[..., 0] - pad[0]) / gain).clip(0, w0)
        points[..., 1] = ((points[..., 1] - pad[1]) / gain).clip(0, h0)
        return Poses(boxes_np.astype(np.float32), out[:, 4].astype(np.float32), points)


def oks(ours: FloatArray, reference: FloatArray, area: float) -> float | None:
    """COCO object keypoint similarity of (17, 3) keypoints, over those the reference sees;
    None when it sees none."""
    seen = reference[:, 2] >= VISIBLE
    if not seen.any():
        return None
    d2 = ((ours[:, :2] - reference[:, :2]) ** 2).sum(axis=1)
    k2 = (2 * OKS_SIGMAS) ** 2
    return float(np.exp(-d2 / (2 * max(area, 1.0) * k2))[seen].mean())


@dataclass(frozen=True)
class Agreement:
    """Check 1 over a set of frames."""

    people: int
    """People the reference found."""
    matched: int
    """Of those, how many the worker found too (IoU >= 0.5)."""
    mean_oks: float
    min_oks: float


def agreement(ours: Sequence[Poses], reference: Sequence[Poses]) -> Agreement:
    scores: list[float] = []
    people = matched = 0
    for got, want in zip(ours, reference, strict=True):
        people += len(want)
        if not len(want) or not len(got):
            continue
        iou = box_iou(want.xyxy, got.xyxy)
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols, strict=True):
            if iou[r, c] < 0.5:
                continue
            matched += 1
            box = want.xyxy[r]
            value = oks(got.keypoints[c], want.keypoints[r], float(np.prod(box[2:] - box[:2])))
            if value is not None:
                scores.append(value)
    return Agreement(
        people, matched, float(np.mean(scores)) if scores else 0.0, float(min(scores, default=0))
    )


def person_ap(
    poses: Sequence[Poses], sizes: Sequence[tuple[int, int]], labels: Sequence[FloatArray]
) -> tuple[float, float]:
    """(AP50-95, AP50) of the pose stage's person boxes against the labelled people."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results = []
    for image_id, ((width, height), boxes, found) in enumerate(
        zip(sizes, labels, poses, strict=True), start=1
    ):
        images.append({"id": image_id, "width": width, "height": height})
        for box in boxes:
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                 "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        for box, score in zip(found.xyxy, found.scores, strict=True):
            results.append([image_id, box[0], box[1], box[2] - box[0], box[3] - box[1], score, 1])
    truth = COCO({"images": images, "annotations": annotations,
                  "categories": [{"id": 1, "name": "person"}]})  # fmt: skip
    if not results:
        return 0.0, 0.0
    evaluation = COCOeval_faster(
        truth, truth.loadRes(np.asarray(results, np.float64)), "bbox", print_function=lambda *_: 0
    )
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def keypoints_inside(poses: Sequence[Poses], labels: Sequence[FloatArray]) -> tuple[int, int]:
    """(visible keypoints inside their person's labelled box enlarged by 10 %, visible
    keypoints of people matched to a labelled box)."""
    inside = total = 0
    for found, boxes in zip(poses, labels, strict=True):
        if not len(found) or not len(boxes):
            continue
        iou = box_iou(boxes, found.xyxy)
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols, strict=True):
            if iou[r, c] < 0.5:
                continue
            box = boxes[r]
            margin = (box[2:] - box[:2]) * 0.1
            low, high = box[:2] - margin, box[2:] + margin
            points = found.keypoints[c]
            seen = points[:, 2] >= VISIBLE
            xy = points[seen, :2]
            inside += int(((xy >= low) & (xy <= high)).all(axis=1).sum())
            total += int(seen.sum())
    return inside, total
