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

Cameras share a table (:class:`ByteTrackTable`): a worker's cameras are tracked in one
update per batch, so the Kalman predict and correct steps, the IoU of every same-camera pair
and the bookkeeping are a fixed number of numpy calls whatever the number of cameras; only
the assignment itself is solved camera by camera (each camera's block is the matrix its own
tracker would solve, so the result is the same as one tracker per camera). A
:class:`ByteTrack` is one camera's view of a table, its own unless it is given one to share.

Every assignment maximises the summed ``threshold - cost`` (one good match beats two
mediocre ones); boxes are compared as inclusive pixel ranges, as the reference does. Each
thresholds is a named field; the right values depend on the detector's score distribution
(``ModelVariant.spec.tracking``). Defaults are the official MOT17 setting (track_thresh 0.6,
det_thresh 0.7, match_thresh 0.9, then 0.5 and 0.7).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubevision.worker.detections import NO_TRACK, Detections, IntArray
from kubevision.worker.trackers.base import (
    Array,
    Mask,
    Pixels,
    ReportBoxes,
    append_rows,
    assign_capped,
    check_count,
    check_fraction,
    check_report_boxes,
    iou_pairs,
    keep_rows,
    output,
)
from kubevision.worker.trackers.kalman import HeightScaled

_DUPLICATE_DISTANCE = 0.15
"""A tracked and a lost track closer than this in 1 - IoU are the same object."""


@dataclass(frozen=True)
class ByteTrackSettings:
    """Thresholds and life-cycle counts, shared by every camera of a table; fractions, with
    ``low_score < high_score <= new_track_score``."""

    max_age: int = 30
    min_hits: int = 2
    high_score: float = 0.6
    low_score: float = 0.1
    new_track_score: float = 0.7
    high_match_iou: float = 0.1
    low_match_iou: float = 0.5
    tentative_match_iou: float = 0.3
    report_boxes: ReportBoxes = "filter"

    def __post_init__(self) -> None:
        check_count("max_age", self.max_age)
        check_count("min_hits", self.min_hits)
        for name in (
            "high_score",
            "low_score",
            "new_track_score",
            "high_match_iou",
            "low_match_iou",
            "tentative_match_iou",
        ):
            check_fraction(name, getattr(self, name))
        if not self.low_score < self.high_score:
            raise ValueError(
                f"low_score ({self.low_score}) must be below high_score ({self.high_score}): "
                "detections between the two are the ones used to rescue tracks"
            )
        if self.new_track_score < self.high_score:
            raise ValueError(
                f"new_track_score ({self.new_track_score}) must be at least high_score "
                f"({self.high_score}): only high-score detections may start tracks"
            )
        check_report_boxes(self.report_boxes)


@dataclass
class _Tracks:
    camera: IntArray
    """The key of the camera the track belongs to."""
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
            none,
            np.empty((0, 8)),
            np.empty((0, 8, 8)),
            none,
            none,
            none,
            no,
            no,
            no,
            none,
            none,
            none,
        )


@dataclass(frozen=True)
class _Batch:
    """One update: its cameras (in the caller's order) and their detections, merged."""

    keys: IntArray
    detections: Detections
    """Every camera's rows, camera after camera."""
    det_slot: IntArray
    """(N,) the position in ``keys`` of each detection's camera."""
    frames: IntArray
    """(B,) each camera's frame number, this frame included."""

    def slots(self, cameras: IntArray) -> IntArray:
        """The position in ``keys`` of each of ``cameras`` (all in the batch)."""
        order = np.argsort(self.keys)
        found: IntArray = order[np.searchsorted(self.keys[order], cameras)]
        return found


def same_camera_pairs(a: IntArray, b: IntArray) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Every (i, j) with ``a[i] == b[j]`` (camera slots), camera by camera, each camera's block
    row-major in the original order of its rows (the matrix its own tracker would see).
    Returns i, j and, per slot, the block's rows and columns."""
    cameras = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    rows, cols = np.bincount(a, minlength=cameras), np.bincount(b, minlength=cameras)
    size = rows * cols
    block = np.repeat(np.arange(cameras), size)
    k = np.arange(int(size.sum())) - (np.cumsum(size) - size)[block]
    i = np.argsort(a, kind="stable")[(np.cumsum(rows) - rows)[block] + k // cols[block]]
    j = np.argsort(b, kind="stable")[(np.cumsum(cols) - cols)[block] + k % cols[block]]
    return i, j, rows, cols


def assign_by_camera(
    cost: Array, i: IntArray, j: IntArray, rows: IntArray, cols: IntArray, max_cost: float
) -> tuple[IntArray, IntArray]:
    """``assign_capped`` on each camera's block of the flat ``cost`` of the pairs ``i``, ``j``
    (:func:`same_camera_pairs`); returns the matched (i, j)."""
    size = rows * cols
    starts = np.cumsum(size) - size
    matched = []
    for slot in np.flatnonzero(size).tolist():
        start, width = int(starts[slot]), int(cols[slot])
        block = cost[start : start + int(size[slot])].reshape(-1, width)
        r, c = assign_capped(block, max_cost)
        matched.append(start + r * width + c)
    flat = np.concatenate(matched) if matched else np.empty(0, np.int64)
    return i[flat], j[flat]


class ByteTrackTable:
    """The tracks of many cameras, advanced together: ``update`` takes one frame of each
    camera of a batch. Thread-safe (lanes on several GPUs may share one)."""

    def __init__(self, settings: ByteTrackSettings | None = None) -> None:
        self.settings = settings or ByteTrackSettings()
        self._filter = HeightScaled()
        self._tracks = _Tracks.empty()
        self._frames: dict[int, int] = {}
        """Frames seen per camera key (the warm-up and age rules count them)."""
        self._next_ids: dict[int, int] = {}
        """Each camera's next public id: 1, 2, 3, ... in order of first report."""
        self._keys = itertools.count()
        self._lock = threading.Lock()

    @property
    def cameras(self) -> int:
        return len(self._frames)

    @property
    def tracks(self) -> int:
        """Tracks held, all cameras, tentative and lost ones included."""
        return len(self._tracks.ids)

    def add(self) -> int:
        """A new camera with no tracks; returns its key."""
        with self._lock:
            key = next(self._keys)
            self._frames[key], self._next_ids[key] = 0, 1
            return key

    def reset(self, key: int) -> None:
        """Forget the camera's tracks and restart its ids at 1."""
        with self._lock:
            self._drop(key)
            self._frames[key], self._next_ids[key] = 0, 1

    def remove(self, key: int) -> None:
        """Forget the camera entirely."""
        with self._lock:
            self._drop(key)
            del self._frames[key], self._next_ids[key]

    def _drop(self, key: int) -> None:
        self._tracks = keep_rows(self._tracks, self._tracks.camera != key)

    def update(self, batch: Sequence[tuple[int, Detections]]) -> list[Detections]:
        """One frame of each camera in ``batch`` (camera key, detections), each at most once;
        returns each camera's reported tracks, in ``batch`` order (none for a camera removed
        while its frame was on the way)."""
        with self._lock:
            live = [i for i, (key, _) in enumerate(batch) if key in self._frames]
            out = [Detections.empty()] * len(batch)
            if live:
                tracked = self._update([batch[i] for i in live])
                for i, found in zip(live, tracked, strict=True):
                    out[i] = found
            return out

    def _update(self, batch: Sequence[tuple[int, Detections]]) -> list[Detections]:
        keys = np.array([key for key, _ in batch], np.int64)
        if len(np.unique(keys)) != len(keys):
            raise ValueError("a camera appears twice in one batch")
        for key in keys.tolist():
            self._frames[key] += 1
        parts = [found for _, found in batch]
        counts = np.array([len(found) for found in parts], np.int64)
        b = _Batch(
            keys,
            parts[0] if len(parts) == 1 else Detections.merge(parts),
            np.repeat(np.arange(len(keys)), counts),
            np.array([self._frames[key] for key in keys.tolist()], np.int64),
        )
        active = np.isin(self._tracks.camera, keys)
        resting = None if active.all() else keep_rows(self._tracks, ~active)
        t = self._step(self._tracks if resting is None else keep_rows(self._tracks, active), b)
        reported = self._report(t, b)  # gives ids: before ``t`` is copied below
        self._tracks = t if resting is None else append_rows(resting, t)
        return reported

    def _step(self, t: _Tracks, b: _Batch) -> _Tracks:
        """The module docstring's steps 1-5 for the batch's cameras' tracks ``t``."""
        s = self.settings
        t.det[:] = -1
        now = b.frames[b.slots(t.camera)]
        # float32 comparisons: a score stored as 0.6 is not above a high_score of 0.6
        scores = b.detections.scores
        high_score = np.float32(s.high_score)
        high = np.flatnonzero(scores > high_score)
        low = np.flatnonzero((scores > np.float32(s.low_score)) & (scores < high_score))
        was_lost = t.lost.copy()
        self._predict(t, t.confirmed | (t.hits > 1))

        pool = np.flatnonzero(t.confirmed)
        used = self._associate(t, b, pool, high, 1 - s.high_match_iou, fuse=True)
        high = np.setdiff1d(high, used, assume_unique=True)
        tracked_left = pool[(t.det[pool] < 0) & ~t.lost[pool]]
        self._associate(t, b, tracked_left, low, 1 - s.low_match_iou, fuse=False)
        t.lost |= t.confirmed & (t.det < 0)

        tentative = np.flatnonzero(~t.confirmed)
        used = self._associate(t, b, tentative, high, 1 - s.tentative_match_iou, fuse=True)
        high = np.setdiff1d(high, used, assume_unique=True)
        matched = t.det >= 0
        t.hits[matched] += 1
        t.last[matched] = now[matched]
        t.confirmed |= matched & (t.hits >= s.min_hits)

        ended = (t.lost & t.expired) | (~t.confirmed & ~matched)
        t.expired |= was_lost & t.lost & (now - t.last > s.max_age)
        t = keep_rows(t, ~ended)
        t = append_rows(t, self._spawn(b, high[scores[high] >= np.float32(s.new_track_score)]))
        return self._drop_duplicates(t, b)

    def _predict(self, t: _Tracks, moving: Mask) -> None:
        """Predict the given tracks; a lost one first forgets its height velocity."""
        mean = t.mean[moving]
        mean[t.lost[moving], 7] = 0.0
        t.mean[moving], t.cov[moving] = self._filter.predict(mean, t.cov[moving])

    def _associate(
        self,
        t: _Tracks,
        b: _Batch,
        rows: IntArray,
        det_rows: IntArray,
        max_cost: float,
        *,
        fuse: bool,
    ) -> IntArray:
        """Match tracks ``rows`` to detections ``det_rows`` of the same camera and class,
        correct the matched tracks; returns the detections used."""
        if len(rows) == 0 or len(det_rows) == 0:
            return det_rows[:0]
        i, j, per_rows, per_cols = same_camera_pairs(b.slots(t.camera[rows]), b.det_slot[det_rows])
        tracks, dets = rows[i], det_rows[j]
        found = b.detections
        similarity = iou_pairs(self._filter.boxes(t.mean[tracks]), found.xyxy[dets], offset=1.0)
        if fuse:
            similarity = similarity * found.scores[dets].astype(np.float64)
        similarity[t.class_ids[tracks] != found.class_ids[dets]] = 0.0
        r, c = assign_by_camera(1.0 - similarity, i, j, per_rows, per_cols, max_cost)
        rows, det_rows = rows[r], det_rows[c]
        t.mean[rows], t.cov[rows] = self._filter.update(
            t.mean[rows], t.cov[rows], found.xyxy[det_rows]
        )
        t.det[rows], t.lost[rows] = det_rows, False
        t.class_ids[rows] = found.class_ids[det_rows]
        return det_rows

    def _spawn(self, b: _Batch, det_rows: IntArray) -> _Tracks:
        mean, cov = self._filter.initiate(b.detections.xyxy[det_rows])
        n = len(det_rows)
        slot = b.det_slot[det_rows]
        frame = b.frames[slot]
        min_hits = self.settings.min_hits
        return _Tracks(
            b.keys[slot],
            mean,
            cov,
            np.full(n, NO_TRACK, np.int64),
            b.detections.class_ids[det_rows],
            np.ones(n, np.int64),
            np.zeros(n, bool),
            (frame < min_hits) | (min_hits == 1),
            np.zeros(n, bool),
            frame,
            frame.copy(),
            det_rows.astype(np.int64),
        )

    def _drop_duplicates(self, t: _Tracks, b: _Batch) -> _Tracks:
        """Of a tracked and a lost track on the same spot, drop the one tracked for less long."""
        tracked, lost = np.flatnonzero(~t.lost), np.flatnonzero(t.lost)
        if len(tracked) == 0 or len(lost) == 0:
            return t
        slot = b.slots(t.camera)
        i, j, _, _ = same_camera_pairs(slot[tracked], slot[lost])
        boxes = self._filter.boxes(t.mean)
        overlap = iou_pairs(boxes[tracked[i]], boxes[lost[j]], offset=1.0)
        overlap[t.class_ids[tracked[i]] != t.class_ids[lost[j]]] = 0.0
        near = 1.0 - overlap < _DUPLICATE_DISTANCE
        if not near.any():
            return t
        pairs_t, pairs_l = tracked[i[near]], lost[j[near]]
        age = t.last - t.start
        older_tracked = age[pairs_t] > age[pairs_l]
        keep = np.ones(len(t.ids), bool)
        keep[pairs_l[older_tracked]] = False
        keep[pairs_t[~older_tracked]] = False
        return keep_rows(t, keep)

    def _report(self, t: _Tracks, b: _Batch) -> list[Detections]:
        """Each camera's confirmed, not lost tracks; ids for the ones reported first now."""
        shown = np.flatnonzero(t.confirmed & ~t.lost)
        self._give_ids(t, b, shown)
        tracked = output(
            b.detections,
            t.det[shown],
            t.ids[shown],
            self._filter.boxes(t.mean[shown]),
            self.settings.report_boxes,
        )
        if len(b.keys) == 1:
            return [tracked]
        counts = np.bincount(b.det_slot[t.det[shown]], minlength=len(b.keys)).tolist()
        ends = itertools.accumulate(counts)
        return [tracked[end - n : end] for end, n in zip(ends, counts, strict=True)]

    def _give_ids(self, t: _Tracks, b: _Batch, shown: IntArray) -> None:
        """Public ids, in place, for ``shown`` tracks without one: per camera, the next ids
        in row order (as one tracker per camera numbers them)."""
        fresh = shown[t.ids[shown] == NO_TRACK]
        if len(fresh) == 0:
            return
        slot = b.slots(t.camera[fresh])
        order = np.argsort(slot, kind="stable")
        counts = np.bincount(slot, minlength=len(b.keys))
        rank = np.empty(len(fresh), np.int64)
        rank[order] = np.arange(len(fresh)) - (np.cumsum(counts) - counts)[slot[order]]
        first = np.array([self._next_ids[key] for key in b.keys.tolist()], np.int64)
        t.ids[fresh] = first[slot] + rank
        for key, n in zip(b.keys.tolist(), counts.tolist(), strict=True):
            self._next_ids[key] += n


class ByteTrack:
    """One camera's ByteTrack (the ``Tracker``): its rows of a :class:`ByteTrackTable`, a
    table of its own made from ``settings`` (:class:`ByteTrackSettings` fields) unless one is
    given to share with other cameras."""

    def __init__(self, table: ByteTrackTable | None = None, **settings: Any) -> None:
        if table is not None and settings:
            raise TypeError("a shared table has its own settings")
        self.table = table if table is not None else ByteTrackTable(ByteTrackSettings(**settings))
        self.key = self.table.add()

    @property
    def settings(self) -> ByteTrackSettings:
        return self.table.settings

    def update(self, detections: Detections, frame: Pixels | None = None) -> Detections:
        """Advance one frame (``frame`` is not used: ByteTrack is motion-only)."""
        return self.table.update([(self.key, detections)])[0]

    def reset(self) -> None:
        self.table.reset(self.key)

    def close(self) -> None:
        self.table.remove(self.key)
