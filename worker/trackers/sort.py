"""SORT (Bewley et al., ICIP 2016): Kalman prediction plus one IoU assignment per frame.

Behaviour is that of the authors' ``abewley/sort`` (same output on the same detections):

1. every track is predicted with SORT's own (centre, area, ratio) filter; one whose prediction
   is no longer a box (negative area) is dropped;
2. detections and predicted tracks are paired by IoU: if the pairs above ``iou_threshold`` are
   already one-to-one they are taken, else an assignment that maximises the summed IoU, of
   which pairs below the threshold are dropped (pairs of different classes never match);
3. unmatched detections start tracks;
4. a track is reported in a frame it is matched in once it has been matched ``min_hits``
   frames in a row after its first detection (so a new track shows on its ``min_hits + 1``-th
   detection, one coming back from a miss on its ``min_hits``-th) and, during the first
   ``min_hits`` frames of a stream, from its first detection on;
5. a track unmatched for more than ``max_age`` frames is dropped.

It is the cheapest tracker and the right one when detections are reliable and objects rarely
occlude each other. Defaults are the paper's (max_age 1, min_hits 3, IoU 0.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from kubevision.worker.detections import NO_TRACK, Detections, IntArray
from kubevision.worker.trackers.base import (
    Array,
    IdCounter,
    Mask,
    Pixels,
    ReportBoxes,
    append_rows,
    check_count,
    check_fraction,
    check_report_boxes,
    iou,
    keep_rows,
    output,
    same_class,
)
from kubevision.worker.trackers.kalman import AreaRatio


@dataclass
class _Tracks:
    mean: Array
    cov: Array
    ids: IntArray
    class_ids: IntArray
    streak: IntArray
    """Frames matched in a row, not counting the first detection (the reference's hit_streak)."""
    since: IntArray
    """Frames since the last match (0: matched this frame)."""
    det: IntArray
    """This frame's detection row, -1 if unmatched."""

    @classmethod
    def empty(cls) -> _Tracks:
        none = np.empty(0, np.int64)
        return cls(np.empty((0, 7)), np.empty((0, 7, 7)), none, none, none, none, none)


def match_iou(overlap: Array, threshold: float) -> tuple[IntArray, IntArray]:
    """SORT's association on a (detections, tracks) IoU matrix -> matched (det, track) rows."""
    if overlap.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    above = overlap > threshold
    if above.sum(axis=1).max() == 1 and above.sum(axis=0).max() == 1:
        dets, tracks = np.nonzero(above)
    else:
        dets, tracks = linear_sum_assignment(-overlap)
        keep = overlap[dets, tracks] >= threshold
        dets, tracks = dets[keep], tracks[keep]
    return dets.astype(np.int64), tracks.astype(np.int64)


class Sort:
    """SORT tracker; see the module docstring."""

    def __init__(
        self,
        *,
        max_age: int = 1,
        min_hits: int = 3,
        iou_threshold: float = 0.3,
        report_boxes: ReportBoxes = "filter",
    ) -> None:
        """``iou_threshold``: least IoU between a predicted track box and a detection to pair."""
        check_count("max_age", max_age)
        check_count("min_hits", min_hits)
        check_fraction("iou_threshold", iou_threshold)
        check_report_boxes(report_boxes)
        self.max_age = max_age
        self.min_hits = min_hits
        self.iou_threshold = iou_threshold
        self.report_boxes: ReportBoxes = report_boxes
        self._filter = AreaRatio()
        self.reset()

    def reset(self) -> None:
        self._tracks = _Tracks.empty()
        self._ids = IdCounter()
        self._frame = 0

    def close(self) -> None:
        """Its state is its own: forgetting it is all there is to release."""
        self.reset()

    def update(self, detections: Detections, frame: Pixels | None = None) -> Detections:
        """Advance one frame (``frame`` is not used: SORT is motion-only)."""
        self._frame += 1
        boxes = self._predict()
        t = self._tracks
        overlap = iou(detections.xyxy, boxes)
        overlap[~same_class(detections.class_ids, t.class_ids)] = 0.0
        dets, rows = match_iou(overlap, self.iou_threshold)
        if len(rows):
            t.mean[rows], t.cov[rows] = self._filter.update(
                t.mean[rows], t.cov[rows], detections.xyxy[dets]
            )
            t.since[rows], t.det[rows] = 0, dets
            t.streak[rows] += 1
            t.class_ids[rows] = detections.class_ids[dets]
        self._spawn(detections, np.setdiff1d(np.arange(len(detections)), dets))
        return self._finish(detections)

    def _predict(self) -> Array:
        """Move every track a frame ahead; drop those that are no box any more."""
        t = self._tracks
        t.mean, t.cov = self._filter.predict(t.mean, t.cov)
        t.streak[t.since > 0] = 0
        t.since += 1
        t.det[:] = -1
        boxes = self._filter.boxes(t.mean)
        valid: Mask = np.asarray(np.isfinite(boxes).all(axis=1))
        if not valid.all():
            self._tracks = keep_rows(t, valid)
            boxes = boxes[valid]
        return boxes

    def _spawn(self, detections: Detections, det_rows: IntArray) -> None:
        mean, cov = self._filter.initiate(detections.xyxy[det_rows])
        zeros = np.zeros(len(det_rows), np.int64)
        new = _Tracks(
            mean,
            cov,
            np.full(len(det_rows), NO_TRACK, np.int64),
            detections.class_ids[det_rows],
            zeros,
            zeros.copy(),
            det_rows.astype(np.int64),
        )
        self._tracks = append_rows(self._tracks, new)

    def _finish(self, detections: Detections) -> Detections:
        """Report, then forget the tracks unmatched for longer than ``max_age``."""
        t = self._tracks
        warming_up = self._frame <= self.min_hits
        shown = np.flatnonzero((t.since < 1) & ((t.streak >= self.min_hits) | warming_up))
        self._ids.give(t.ids, shown)
        result = output(
            detections,
            t.det[shown],
            t.ids[shown],
            self._filter.boxes(t.mean[shown]),
            self.report_boxes,
        )
        alive = t.since <= self.max_age
        if not alive.all():
            self._tracks = keep_rows(t, alive)
        return result
