"""What every tracker is (``Tracker``) and the track bookkeeping SORT, ByteTrack and DeepSORT share.

The trackers differ only in how they pair this frame's detections with existing tracks; the
life cycle around that is common and lives in ``TrackTable``:

* a new track is *tentative* and has no public id; it is confirmed, and only then gets an id,
  once it has been matched in ``min_hits`` consecutive frames (so false positives that flicker
  for a frame or two never burn an id);
* a tentative track that misses a frame is dropped (DeepSORT's and ByteTrack's rule);
* a confirmed track that goes unmatched is kept, coasting on its Kalman prediction, for
  ``max_age`` frames and ends on the next miss.

``update`` returns the detections matched to confirmed tracks, with ``track_ids`` set, in input
order. Boxes, scores and classes are the detector's, not the filter's estimate: downstream
stages crop and classify what was actually seen.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from kubevision.worker.detections import NO_TRACK, Detections, FloatArray, IntArray
from kubevision.worker.trackers import kalman

Image = npt.NDArray[np.uint8]
"""A decoded frame, H x W x 3, BGR (OpenCV's order)."""

_FORBIDDEN = 1e6
"""Stand-in cost for gated-out pairs; far above any real cost (all are in [0, 2])."""


class Tracker(Protocol):
    """A stateful multi-object tracker for one camera stream."""

    def update(self, detections: Detections, frame: Image | None = None) -> Detections:
        """Advance one frame; return the confirmed tracks' detections with track ids set."""
        ...

    def reset(self) -> None:
        """Forget every track and restart ids at 1 (e.g. after a stream reconnects)."""
        ...


class Embedder(Protocol):
    """Appearance features for boxes in a frame (re-id), for DeepSORT."""

    def __call__(self, frame: Image, xyxy: FloatArray) -> FloatArray:
        """(N, 4) boxes of ``frame`` -> (N, D) L2-normalised embeddings."""
        ...


def check_fraction(name: str, value: float) -> None:
    """Thresholds on scores, IoUs and cosine distances are fractions."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1 inclusive, got {value!r}")


def check_count(name: str, value: int) -> None:
    """Frame counts: a tracker that keeps or confirms after zero frames is meaningless."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def assign(cost: npt.NDArray[np.floating], max_cost: float) -> tuple[IntArray, IntArray]:
    """Optimal one-to-one matching of rows to columns among pairs with ``cost <= max_cost``.

    Non-finite costs are forbidden pairs. Returns matched (row indices, column indices).
    Gated-out pairs get a prohibitive cost rather than being dropped, so the solver first
    maximises the number of admissible matches, then minimises their total cost.
    """
    feasible = np.isfinite(cost) & (cost <= max_cost)
    if not feasible.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows, cols = linear_sum_assignment(np.where(feasible, cost, _FORBIDDEN))
    keep = feasible[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def same_class(track_classes: IntArray, detection_classes: IntArray) -> npt.NDArray[np.bool_]:
    """(T, N) mask of pairs of equal class: a car detection never continues a person track."""
    mask: npt.NDArray[np.bool_] = track_classes[:, None] == detection_classes[None, :]
    return mask


class TrackTable:
    """All tracks of one tracker as parallel arrays, one row per track.

    Attributes (T rows): ``mean``/``cov`` Kalman state, ``ids`` (``NO_TRACK`` while
    tentative), ``hits`` (consecutive matched frames), ``misses`` (frames since the last
    match), ``class_ids``, ``det_index`` (this frame's matched detection row or -1) and, for
    appearance trackers, ``features`` (T, D).
    """

    def __init__(self, *, max_age: int, min_hits: int) -> None:
        check_count("max_age", max_age)
        check_count("min_hits", min_hits)
        self.max_age = max_age
        self.min_hits = min_hits
        self.clear()

    def clear(self) -> None:
        """Drop every track and restart this table's ids at 1."""
        self.mean: kalman.Array = np.empty((0, 8))
        self.cov: kalman.Array = np.empty((0, 8, 8))
        self.ids: IntArray = np.empty(0, np.int64)
        self.hits: IntArray = np.empty(0, np.int64)
        self.misses: IntArray = np.empty(0, np.int64)
        self.class_ids: IntArray = np.empty(0, np.int64)
        self.det_index: IntArray = np.empty(0, np.int64)
        self.features: FloatArray | None = None
        self._predicted: FloatArray = np.empty((0, 4), np.float32)
        self._matched: list[tuple[IntArray, IntArray]] = []
        self._next_id = 1

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def confirmed(self) -> npt.NDArray[np.bool_]:
        mask: npt.NDArray[np.bool_] = self.ids != NO_TRACK
        return mask

    def boxes(self, rows: IntArray) -> FloatArray:
        """This frame's predicted xyxy boxes of the given tracks (what association compares)."""
        return self._predicted[rows]

    def predict(self) -> None:
        """Start a frame: move every track one step ahead; nothing is matched yet."""
        if len(self):
            self.mean, self.cov = kalman.predict(self.mean, self.cov)
        self._predicted = kalman.xyah_to_xyxy(self.mean).astype(np.float32)
        self.det_index = np.full(len(self), -1, np.int64)
        self._matched = []

    def match(self, rows: IntArray, det_rows: IntArray, detections: Detections) -> None:
        """Pair tracks ``rows`` with detections ``det_rows`` (element-wise).

        The Kalman correction waits for :meth:`finish`, one batched update for every match of
        the frame: association passes only compare tracks still unmatched, whose state a
        correction would not touch, so the result is the same as correcting here.
        """
        if len(rows) == 0:
            return
        self._matched.append((rows, det_rows))
        self.hits[rows] += 1
        self.misses[rows] = 0
        self.class_ids[rows] = detections.class_ids[det_rows]
        self.det_index[rows] = det_rows

    def spawn(
        self, det_rows: IntArray, detections: Detections, features: FloatArray | None = None
    ) -> None:
        """Start tentative tracks from detections ``det_rows`` (with their features, if any)."""
        if len(det_rows) == 0:
            return
        mean, cov = kalman.initiate(kalman.xyxy_to_xyah(detections.xyxy[det_rows]))
        n = len(det_rows)
        self.mean = np.concatenate([self.mean, mean])
        self.cov = np.concatenate([self.cov, cov])
        self.ids = np.concatenate([self.ids, np.full(n, NO_TRACK, np.int64)])
        self.hits = np.concatenate([self.hits, np.ones(n, np.int64)])
        self.misses = np.concatenate([self.misses, np.zeros(n, np.int64)])
        self.class_ids = np.concatenate([self.class_ids, detections.class_ids[det_rows]])
        self.det_index = np.concatenate([self.det_index, det_rows])
        if features is not None:
            old = self.features if self.features is not None else np.empty((0, features.shape[1]))
            self.features = np.concatenate([old, features]).astype(np.float32)

    def finish(self, detections: Detections) -> Detections:
        """End the frame: correct matched tracks, age unmatched ones, drop dead ones, confirm,
        return the output."""
        if self._matched:
            rows, det_rows = (np.concatenate(parts) for parts in zip(*self._matched, strict=True))
            z = kalman.xyxy_to_xyah(detections.xyxy[det_rows])
            self.mean[rows], self.cov[rows] = kalman.update(self.mean[rows], self.cov[rows], z)
            self._matched = []
        unmatched = self.det_index < 0
        self.misses[unmatched] += 1
        self.hits[unmatched] = 0
        dead = (self.misses > self.max_age) | (~self.confirmed & (self.misses > 0))
        if dead.any():
            self._keep(~dead)
        fresh = ~self.confirmed & (self.hits >= self.min_hits)
        n_new = int(fresh.sum())
        self.ids[fresh] = np.arange(self._next_id, self._next_id + n_new)
        self._next_id += n_new
        shown = np.flatnonzero(self.confirmed & (self.det_index >= 0))
        shown = shown[np.argsort(self.det_index[shown])]
        return detections[self.det_index[shown]].with_tracks(self.ids[shown])

    def _keep(self, rows: npt.NDArray[np.bool_]) -> None:
        self.mean, self.cov = self.mean[rows], self.cov[rows]
        self.ids, self.hits, self.misses = self.ids[rows], self.hits[rows], self.misses[rows]
        self.class_ids, self.det_index = self.class_ids[rows], self.det_index[rows]
        if self.features is not None:
            self.features = self.features[rows]
