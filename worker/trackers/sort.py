"""SORT (Bewley et al., 2016): Kalman prediction + one IoU assignment per frame.

Every track, tentative or confirmed, competes for this frame's detections in a single optimal
assignment on 1 - IoU between predicted track boxes and detections (pairs below
``iou_threshold`` or of different classes are not allowed); unmatched detections start
tentative tracks. It is the cheapest tracker and the right default when detections are
reliable and objects rarely occlude each other.

Differences from the reference implementation: the Kalman filter is the height-scaled
(cx, cy, a, h) one shared with ByteTrack and DeepSORT rather than SORT's (cx, cy, area, ratio)
with fixed noise, and tracks are reported only once confirmed (the reference also reports
unconfirmed tracks during the first ``min_hits`` frames of a video).
"""

from __future__ import annotations

import numpy as np

from kubevision.worker.detections import Detections, box_iou
from kubevision.worker.trackers.base import (
    Image,
    TrackTable,
    assign,
    check_fraction,
    same_class,
)


class Sort:
    """SORT tracker; see the module docstring."""

    def __init__(self, *, max_age: int = 30, min_hits: int = 3, iou_threshold: float = 0.3) -> None:
        """``iou_threshold``: least IoU between a predicted track box and a detection to pair."""
        check_fraction("iou_threshold", iou_threshold)
        self.iou_threshold = iou_threshold
        self._tracks = TrackTable(max_age=max_age, min_hits=min_hits)

    def update(self, detections: Detections, frame: Image | None = None) -> Detections:
        """Advance one frame (``frame`` is not used: SORT is motion-only)."""
        tracks = self._tracks
        tracks.predict()
        rows = np.arange(len(tracks))
        iou = box_iou(tracks.boxes(rows), detections.xyxy)
        cost = np.where(same_class(tracks.class_ids, detections.class_ids), 1.0 - iou, np.inf)
        matched_rows, matched_dets = assign(cost, 1.0 - self.iou_threshold)
        tracks.match(matched_rows, matched_dets, detections)
        tracks.spawn(np.setdiff1d(np.arange(len(detections)), matched_dets), detections)
        return tracks.finish(detections)

    def reset(self) -> None:
        self._tracks.clear()
