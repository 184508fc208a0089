"""ByteTrack (Zhang et al., ECCV 2022): associate every detection box, low scores included.

A detector's low-score boxes are mostly occluded or blurred real objects, not noise, but a
single score cut cannot tell the two apart. ByteTrack splits detections at ``high_score`` and
uses the low ones only to continue tracks that already exist. Behaviour is that of the
official ``BYTETracker`` (``ifzhang/ByteTrack``; same output on the same detections):

1. confirmed tracks, tracked and lost, are predicted (a lost one with its height velocity
   zeroed) and matched to the detections scoring above ``high_score`` on cost
   1 - IoU x score, pairs allowed down to ``high_match_iou``; a lost track matched is found;
2. tracked (not lost) tracks still unmatched are matched to the detections scoring between
   ``low_score`` and ``high_score`` on 1 - IoU down to ``low_match_iou``; this is what keeps
   an id through a partial occlusion; tracks still unmatched become lost;
3. tentative tracks (seen once) are matched, unpredicted, to the high detections left
   (1 - IoU x score, down to ``tentative_match_iou``); tentative tracks left are dropped;
4. high detections left start tentative tracks if they score at least ``new_track_score``;
   a track is confirmed, and reported, once matched ``min_hits`` times in total (the
   reference: 2) or at once during the first ``min_hits - 1`` frames of a stream;
5. a lost track is dropped after ``max_age`` frames (as in the reference, it can still be found
   on the frame after, but then ends the next time it is lost); a tracked and a lost track
   that overlap almost entirely (IoU > 0.85) are one object twice: the younger is dropped.

Every assignment maximises the summed ``threshold - cost`` (one good match beats two
mediocre ones); boxes are compared as inclusive pixel ranges, as the reference does. Each
thresholds is a named field; the right values depend on the detector's score distribution
(``ModelVariant.spec.tracking``). Defaults are the official MOT17 setting (track_thresh 0.6,
det_thresh 0.7, match_thresh 0.9, then 0.5 and 0.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kubevision.worker.detections import NO_TRACK, Detections, IntArray
from kubevision.worker.trackers.base import (
    Array,
    IdCounter,
    Image,
    Mask,
    ReportBoxes,
    append_rows,
    assign_capped,
    check_count,
    check_fraction,
    check_report_boxes,
    iou,
    keep_rows,
    output,
    same_class,
)
from kubevision.worker.trackers.kalman import HeightScaled

_DUPLICATE_DISTANCE = 0.15
"""A tracked and a lost track closer than this in 1 - IoU are the same object."""


@dataclass
class _Tracks:
    mean: Array
    cov: Array
    ids: IntArray
    class_ids: IntArray
    hits: IntArray
    lost: Mask
    confirmed: Mask
    expired: Mask
    """Lost for longer than ``max_age`` at some frame: one more frame to be found (the
    reference drops such a track only on the frame after), and ended the next time it is lost."""
    start: IntArray
    """Frame of the first detection."""
    last: IntArray
    """Frame of the latest match."""
    det: IntArray
    """This frame's detection row, -1 if unmatched."""

    @classmethod
    def empty(cls) -> _Tracks:
        none, no = np.empty(0, np.int64), np.empty(0, bool)
        return cls(
            np.empty((0, 8)), np.empty((0, 8, 8)), none, none, none, no, no, no, none, none, none
        )


class ByteTrack:
    """ByteTrack tracker; see the module docstring."""

    def __init__(
        self,
        *,
        max_age: int = 30,
        min_hits: int = 2,
        high_score: float = 0.6,
        low_score: float = 0.1,
        new_track_score: float = 0.7,
        high_match_iou: float = 0.1,
        low_match_iou: float = 0.5,
        tentative_match_iou: float = 0.3,
        report_boxes: ReportBoxes = "filter",
    ) -> None:
        """Thresholds are fractions; ``low_score < high_score <= new_track_score``."""
        check_count("max_age", max_age)
        check_count("min_hits", min_hits)
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
        check_report_boxes(report_boxes)
        self.max_age = max_age
        self.min_hits = min_hits
        self.high_score = high_score
        self.low_score = low_score
        self.new_track_score = new_track_score
        self.high_match_iou = high_match_iou
        self.low_match_iou = low_match_iou
        self.tentative_match_iou = tentative_match_iou
        self.report_boxes: ReportBoxes = report_boxes
        self._filter = HeightScaled()
        self.reset()

    def reset(self) -> None:
        self._tracks = _Tracks.empty()
        self._ids = IdCounter()
        self._frame = 0

    def update(self, detections: Detections, frame: Image | None = None) -> Detections:
        """Advance one frame (``frame`` is not used: ByteTrack is motion-only)."""
        self._frame += 1
        t = self._tracks
        t.det[:] = -1
        # float32 comparisons: a score stored as 0.6 is not above a high_score of 0.6
        scores = detections.scores
        high_score = np.float32(self.high_score)
        high = np.flatnonzero(scores > high_score)
        low = np.flatnonzero((scores > np.float32(self.low_score)) & (scores < high_score))
        was_lost = t.lost.copy()
        self._predict(t.confirmed | (t.hits > 1))

        pool = np.flatnonzero(t.confirmed)
        _, used = self._associate(pool, high, detections, 1 - self.high_match_iou, fuse=True)
        high = np.setdiff1d(high, used, assume_unique=True)
        tracked_left = pool[(t.det[pool] < 0) & ~t.lost[pool]]
        self._associate(tracked_left, low, detections, 1 - self.low_match_iou, fuse=False)
        t.lost |= t.confirmed & (t.det < 0)

        tentative = np.flatnonzero(~t.confirmed)
        _, used = self._associate(
            tentative, high, detections, 1 - self.tentative_match_iou, fuse=True
        )
        high = np.setdiff1d(high, used, assume_unique=True)
        matched = t.det >= 0
        t.hits[matched] += 1
        t.last[matched] = self._frame
        t.confirmed |= matched & (t.hits >= self.min_hits)

        ended = (t.lost & t.expired) | (~t.confirmed & ~matched)
        t.expired |= was_lost & t.lost & (self._frame - t.last > self.max_age)
        self._tracks = keep_rows(t, ~ended)
        self._spawn(detections, high[scores[high] >= np.float32(self.new_track_score)])
        self._drop_duplicates()
        return self._report(detections)

    def _predict(self, moving: Mask) -> None:
        """Predict the given tracks; a lost one first forgets its height velocity."""
        t = self._tracks
        mean = t.mean[moving]
        mean[t.lost[moving], 7] = 0.0
        t.mean[moving], t.cov[moving] = self._filter.predict(mean, t.cov[moving])

    def _associate(
        self,
        rows: IntArray,
        det_rows: IntArray,
        detections: Detections,
        max_cost: float,
        *,
        fuse: bool,
    ) -> tuple[IntArray, IntArray]:
        """Match tracks ``rows`` to detections ``det_rows``, correct the matched tracks."""
        t = self._tracks
        if len(rows) == 0 or len(det_rows) == 0:
            return rows[:0], det_rows[:0]
        similarity = iou(self._filter.boxes(t.mean[rows]), detections.xyxy[det_rows], offset=1.0)
        if fuse:
            similarity = similarity * detections.scores[det_rows].astype(np.float64)[None, :]
        similarity[~same_class(t.class_ids[rows], detections.class_ids[det_rows])] = 0.0
        r, c = assign_capped(1.0 - similarity, max_cost)
        rows, det_rows = rows[r], det_rows[c]
        t.mean[rows], t.cov[rows] = self._filter.update(
            t.mean[rows], t.cov[rows], detections.xyxy[det_rows]
        )
        t.det[rows], t.lost[rows] = det_rows, False
        t.class_ids[rows] = detections.class_ids[det_rows]
        return rows, det_rows

    def _spawn(self, detections: Detections, det_rows: IntArray) -> None:
        mean, cov = self._filter.initiate(detections.xyxy[det_rows])
        n = len(det_rows)
        frame = np.full(n, self._frame, np.int64)
        new = _Tracks(
            mean,
            cov,
            np.full(n, NO_TRACK, np.int64),
            detections.class_ids[det_rows],
            np.ones(n, np.int64),
            np.zeros(n, bool),
            np.full(n, self._frame < self.min_hits or self.min_hits == 1, bool),
            np.zeros(n, bool),
            frame,
            frame.copy(),
            det_rows.astype(np.int64),
        )
        self._tracks = append_rows(self._tracks, new)

    def _drop_duplicates(self) -> None:
        """Of a tracked and a lost track on the same spot, drop the one tracked for less long."""
        t = self._tracks
        tracked, lost = np.flatnonzero(~t.lost), np.flatnonzero(t.lost)
        if len(tracked) == 0 or len(lost) == 0:
            return
        boxes = self._filter.boxes(t.mean)
        overlap = iou(boxes[tracked], boxes[lost], offset=1.0)
        overlap[~same_class(t.class_ids[tracked], t.class_ids[lost])] = 0.0
        pairs_t, pairs_l = np.nonzero(1.0 - overlap < _DUPLICATE_DISTANCE)
        if len(pairs_t) == 0:
            return
        age = t.last - t.start
        older_tracked = age[tracked[pairs_t]] > age[lost[pairs_l]]
        drop = np.concatenate([lost[pairs_l[older_tracked]], tracked[pairs_t[~older_tracked]]])
        keep = np.ones(len(t.ids), bool)
        keep[drop] = False
        self._tracks = keep_rows(t, keep)

    def _report(self, detections: Detections) -> Detections:
        t = self._tracks
        shown = np.flatnonzero(t.confirmed & ~t.lost)
        self._ids.give(t.ids, shown)
        return output(
            detections,
            t.det[shown],
            t.ids[shown],
            self._filter.boxes(t.mean[shown]),
            self.report_boxes,
        )
