"""The pose stage: people and their 17 COCO keypoints from a YOLOv8-pose model, attached to the
camera's person tracks.

The model (e.g. YOLOv8n-pose, an OpenVINO IR) sees the whole frame letterboxed like the
YOLOv8 detector (RGB, 0-1, centred, pad 114) and returns ``(N, 56, anchors)``: per anchor a box
(cx, cy, w, h in input pixels), the person score, then 17 keypoints as (x, y, visibility),
already decoded by the export (positions in input pixels, visibility a probability). Boxes
above ``confidence`` go through NMS, then boxes and keypoints go back to frame pixels through
the same letterbox placement the detector uses. Each person track takes the pose whose box
overlaps it most (IoU at least ``match_iou``, one pose per track, Hungarian assignment).

Keypoint order is COCO's (:data:`KEYPOINTS`); a keypoint's visibility below
``keypoint_visibility`` is reported as not visible (its position is still the model's guess).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends.base import InferenceBackend
from kubevision.worker.decoders import decoder_for, nms
from kubevision.worker.detections import NO_TRACK, Detections, FloatArray, box_iou
from kubevision.worker.preprocess import Frame, Letterbox, preprocess

KEYPOINTS = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
"""COCO's 17 person keypoints, in the order the model outputs them."""
_CHANNELS = 4 + 1 + 3 * len(KEYPOINTS)


@dataclass(frozen=True)
class Poses:
    """People in one frame: ``xyxy`` (N, 4) and ``scores`` (N,) like detections, and
    ``keypoints`` (N, 17, 3): x, y in frame pixels and the visibility probability."""

    xyxy: FloatArray
    scores: FloatArray
    keypoints: FloatArray

    @classmethod
    def empty(cls) -> Poses:
        return cls(
            np.empty((0, 4), np.float32),
            np.empty(0, np.float32),
            np.empty((0, len(KEYPOINTS), 3), np.float32),
        )

    def __len__(self) -> int:
        return len(self.xyxy)


class PoseEstimator:
    """A YOLOv8-pose model with its letterbox, decode, NMS and mapping to frame pixels."""

    def __init__(
        self,
        model: ModelConfig,
        backend: InferenceBackend,
        confidence: float = 0.25,
        nms_iou: float = 0.7,
        match_iou: float = 0.3,
        max_people: int = 100,
    ) -> None:
        """Args: ``confidence`` least person score kept; ``nms_iou`` NMS overlap; ``match_iou``
        least IoU between a track's box and a pose's box to attach it; ``max_people`` bound per
        frame (Ultralytics' defaults for the first two)."""
        for name, value in (("confidence", confidence), ("nms_iou", nms_iou)):
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if not 0 < match_iou <= 1:
            raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
        if model.task != "pose":
            raise ValueError(f"{model.variant} is a {model.task} model, not a pose model")
        self.model = model
        self._backend = backend
        self._size = (model.input_size.width, model.input_size.height)
        self._format = decoder_for("yolov8").input_format
        self._confidence = confidence
        self._nms_iou = nms_iou
        self.match_iou = match_iou
        self._max_people = max_people

    def __call__(self, frames: Sequence[Frame]) -> list[Poses]:
        """The people of each frame, best first."""
        if not frames:
            return []
        width, height = self._size
        tensor, placements = preprocess(frames, width, height, self._format)
        (raw,) = self._backend.infer(tensor)[:1]
        if raw.ndim != 3 or raw.shape[1] != _CHANNELS:
            raise ValueError(f"pose output must be (N, {_CHANNELS}, anchors), got {raw.shape}")
        return [
            self._decode(out.T, placement) for out, placement in zip(raw, placements, strict=True)
        ]

    def _decode(self, rows: FloatArray, placement: Letterbox) -> Poses:
        scores = rows[:, 4]
        keep = scores > self._confidence
        rows, scores = rows[keep], scores[keep]
        if len(rows) == 0:
            return Poses.empty()
        cxcy, wh = rows[:, :2], rows[:, 2:4]
        xyxy = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1)
        kept = nms(xyxy, scores, np.zeros(len(rows), np.int64), self._nms_iou, self._max_people)
        points = rows[kept, 5:].reshape(len(kept), len(KEYPOINTS), 3).copy()
        points[..., :2] = to_frame_points(points[..., :2], placement)
        return Poses(placement.to_frame(xyxy[kept]), scores[kept].astype(np.float32), points)

    def attach(self, tracked: Detections, poses: Poses, person: int) -> dict[int, FloatArray]:
        """track id -> (17, 3) keypoints for the ``person``-class tracks that match a pose."""
        rows = np.flatnonzero((tracked.class_ids == person) & (tracked.track_ids != NO_TRACK))
        if len(rows) == 0 or len(poses) == 0:
            return {}
        iou = box_iou(tracked.xyxy[rows], poses.xyxy)
        track_rows, pose_rows = linear_sum_assignment(-iou)
        return {
            int(tracked.track_ids[rows[t]]): poses.keypoints[p]
            for t, p in zip(track_rows, pose_rows, strict=True)
            if iou[t, p] >= self.match_iou
        }


def to_frame_points(points: FloatArray, placement: Letterbox) -> FloatArray:
    """(..., 2) input-pixel points -> frame pixels, clipped to the frame."""
    scale = np.array([placement.scale_x, placement.scale_y], np.float32)
    offset = np.array([placement.pad_x, placement.pad_y], np.float32)
    frame = (np.asarray(points, np.float32) - offset) / scale
    limits = np.array([placement.frame_width, placement.frame_height], np.float32)
    clipped: npt.NDArray[np.float32] = np.clip(frame, np.float32(0), limits)
    return clipped
