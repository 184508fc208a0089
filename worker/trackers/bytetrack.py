"""ByteTrack (Zhang et al., ECCV 2022): associate every detection box, low scores included.

A detector's low-score boxes are mostly occluded or blurred real objects, not noise, but a
single score cut cannot tell the two apart. ByteTrack splits detections at ``high_score`` and
uses the low ones only to continue tracks that already exist:

1. high-score detections vs all confirmed tracks (tracked and lost), cost 1 - IoU x score
   (the official MOT17 setting, which prefers confident boxes when IoUs tie);
2. low-score detections (``low_score`` < score < ``high_score``) vs the confirmed tracks that
   were tracked last frame and are still unmatched, cost 1 - IoU; this is what keeps an id
   through a partial occlusion;
3. tentative tracks vs the high-score detections left over, cost 1 - IoU x score;
4. high-score detections still left start tentative tracks if their score is at least
   ``new_track_score``; low-score ones never start a track.

Each stage is one optimal assignment with pairs below its IoU threshold (or of different
classes) not allowed. Defaults are the paper's (0.6 / 0.1, new tracks at 0.7) and the official
code's matching thresholds (0.2, 0.5, 0.3 as least IoU).
"""

from __future__ import annotations

import numpy as np

from kubevision.worker.detections import Detections, IntArray, box_iou
from kubevision.worker.trackers.base import (
    Image,
    TrackTable,
    assign,
    check_fraction,
    same_class,
)


class ByteTrack:
    """ByteTrack tracker; see the module docstring."""

    def __init__(
        self,
        *,
        max_age: int = 30,
        min_hits: int = 3,
        high_score: float = 0.6,
        low_score: float = 0.1,
        new_track_score: float = 0.7,
        high_match_iou: float = 0.2,
        low_match_iou: float = 0.5,
        tentative_match_iou: float = 0.3,
    ) -> None:
        """Thresholds are fractions; ``low_score < high_score <= new_track_score``."""
        for name, value in (
            ("high_score", high_score),
            ("low_score", low_score),
            ("new_track_score", new_track_score),
            ("high_match_iou", high_match_iou),
            ("low_match_iou", low_match_iou),
            ("tentative_match_iou", tentative_match_iou),
        ):
            check_fraction(name, value)
        if not low_score < high_score:
            raise ValueError(
                f"low_score ({low_score}) must be below high_score ({high_score}): "
                "detections between the two are the ones used to rescue tracks"
            )
        if new_track_score < high_score:
            raise ValueError(
                f"new_track_score ({new_track_score}) must be at least high_score "
                f"({high_score}): only high-score detections may start tracks"
            )
        self.high_score = high_score
        self.low_score = low_score
        self.new_track_score = new_track_score
        self.high_match_iou = high_match_iou
        self.low_match_iou = low_match_iou
        self.tentative_match_iou = tentative_match_iou
        self._tracks = TrackTable(max_age=max_age, min_hits=min_hits)

    def update(self, detections: Detections, frame: Image | None = None) -> Detections:
        """Advance one frame (``frame`` is not used: ByteTrack is motion-only)."""
        tracks = self._tracks
        was_tracked = tracks.confirmed & (tracks.misses == 0)
        tracks.predict()
        scores = detections.scores
        high = np.flatnonzero(scores >= self.high_score)
        low = np.flatnonzero((scores > self.low_score) & (scores < self.high_score))

        confirmed = np.flatnonzero(tracks.confirmed)
        _, dets = self._associate(confirmed, high, detections, self.high_match_iou, fuse=True)
        high_left = _without(high, dets, len(detections))

        tracked_left = np.flatnonzero(was_tracked & (tracks.det_index < 0))
        self._associate(tracked_left, low, detections, self.low_match_iou, fuse=False)

        tentative = np.flatnonzero(~tracks.confirmed)
        _, dets = self._associate(
            tentative, high_left, detections, self.tentative_match_iou, fuse=True
        )
        high_left = _without(high_left, dets, len(detections))

        tracks.spawn(high_left[scores[high_left] >= self.new_track_score], detections)
        return tracks.finish(detections)

    def reset(self) -> None:
        self._tracks.clear()

    def _associate(
        self,
        rows: IntArray,
        det_rows: IntArray,
        detections: Detections,
        min_iou: float,
        *,
        fuse: bool,
    ) -> tuple[IntArray, IntArray]:
        """Match tracks ``rows`` to detections ``det_rows``; returns the matched pairs."""
        tracks = self._tracks
        if len(rows) == 0 or len(det_rows) == 0:
            return rows[:0], det_rows[:0]
        iou = box_iou(tracks.boxes(rows), detections.xyxy[det_rows])
        if fuse:
            iou = iou * detections.scores[det_rows][None, :]
        allowed = same_class(tracks.class_ids[rows], detections.class_ids[det_rows])
        r, c = assign(np.where(allowed, 1.0 - iou, np.inf), 1.0 - min_iou)
        tracks.match(rows[r], det_rows[c], detections)
        return rows[r], det_rows[c]


def _without(rows: IntArray, removed: IntArray, size: int) -> IntArray:
    """``rows`` minus ``removed`` (indices below ``size``), order kept; a mask, not a sort."""
    keep = np.ones(size, bool)
    keep[removed] = False
    return rows[keep[rows]]
